"""The answer log: one row per answer, complete enough to train on later (see ``Answer``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kbot.db import Database
from kbot.db.models import Answer


@dataclass
class AnswerRecord:
    id: str
    platform: str
    asker: str
    channel: str
    thread: str
    collections: list[str]
    question: str
    search_query: str
    messages: list[dict[str, str]]
    retrieved: list[dict[str, Any]]
    answer: str
    citations: list[dict[str, Any]]
    status: str
    base_model: str
    adapter_version: str | None
    latency_ms: int
    error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


async def record_answer(db: Database, rec: AnswerRecord) -> None:
    async with db.session() as s:
        s.add(
            Answer(
                id=rec.id,
                platform=rec.platform,
                asker=rec.asker,
                channel=rec.channel,
                thread=rec.thread,
                collections=rec.collections,
                question=rec.question,
                search_query=rec.search_query,
                messages=rec.messages,
                retrieved=rec.retrieved,
                answer=rec.answer,
                citations=rec.citations,
                status=rec.status,
                error=rec.error,
                base_model=rec.base_model,
                adapter_version=rec.adapter_version,
                latency_ms=rec.latency_ms,
            )
        )
