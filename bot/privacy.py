"""Forgetting: one person on request (``kbot forget``), and everyone's old data (retention).

What a person left: their questions and the answers to them (the prompts, the retrieved
passages, the chat messages showing them, the votes and corrections others gave on them), their
own votes and corrections (an approved one also leaves the verified answers kbot answers from),
the inbound events that name them, and the conversation memory of every thread they asked in.
Retention (``KBOT_RETENTION_DAYS``) removes answers older than the limit the same way, except
those an approved correction rests on (a verified answer is knowledge, not chatter); training
datasets already exported live in their run's folder and stay there.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from agent.answering import Answerer
from bot import spool
from kbot.db.models import Answer, AnswerMessage, Correction, InboundEvent, Vote
from kbot.errors import ConfigError

log = logging.getLogger(__name__)
PLATFORMS = ("slack", "teams", "web")


@dataclass
class Erased:
    answers: int = 0
    votes: int = 0
    corrections: int = 0
    events: int = 0
    conversations: int = 0
    waiting: int = 0  # feedback kept on disk during a database outage (bot/spool.py)

    def __str__(self) -> str:
        return ", ".join(f"{getattr(self, f.name)} {f.name}" for f in fields(self))


def parse_person(person: str) -> tuple[str, str]:
    """``slack:U0123`` → ("slack", "U0123"); a plain error for anything else."""
    platform, _, user = person.partition(":")
    if platform not in PLATFORMS or not user:
        raise ConfigError(
            f"{person!r} names no one: write PLATFORM:ID, e.g. slack:U0123, teams:<AAD object id> "
            "or web:alice@example.com (the id kbot logs as the asker)."
        )
    return platform, user


async def forget(answerer: Answerer, person: str) -> Erased:
    """Delete everything kbot keeps of ``person``; what went, counted (logged without content)."""
    platform, user = parse_person(person)
    erased = Erased()
    async with answerer.kb.db.session() as s:
        asked = (await s.execute(select(Answer.id, Answer.channel, Answer.thread).where(
            Answer.platform == platform, Answer.asker == user
        ))).all()  # fmt: skip
        ids = [a.id for a in asked]
        own = list(await s.scalars(select(Correction.id).where(
            Correction.platform == platform, Correction.author == user, Correction.status == "approved"
        )))  # fmt: skip
        verified = own + await _approved_on(s, ids)
        erased.votes = await _count_delete(s, Vote, Vote.platform == platform, Vote.voter == user)
        erased.corrections = await _count_delete(
            s, Correction, Correction.platform == platform, Correction.author == user
        )
        await _delete_answers(s, ids, erased)
        erased.events = await _count_delete(
            s, InboundEvent, InboundEvent.platform == platform, InboundEvent.actor == user
        )
    threads = {f"{platform}:{a.channel}:{a.thread}" for a in asked if a.thread}
    await _forget_threads(answerer, verified, threads, erased)
    erased.waiting = spool.erase(answerer.settings.data_dir / "spool", platform, user)
    log.info("forgot %s: %s", person, erased)
    return erased


async def expire(answerer: Answerer, days: int, *, now: datetime | None = None) -> Erased:
    """Delete answers older than ``days`` days, and their threads' memory when nothing newer is there."""
    cutoff = (now or datetime.now(UTC)) - timedelta(days=days)
    erased = Erased()
    async with answerer.kb.db.session() as s:
        resting = select(Correction.answer_id).where(Correction.status == "approved")
        old = (await s.execute(select(Answer.id, Answer.platform, Answer.channel, Answer.thread).where(
            Answer.created_at < cutoff, Answer.id.not_in(resting)
        ))).all()  # fmt: skip
        await _delete_answers(s, [a.id for a in old], erased)
        erased.events = await _count_delete(s, InboundEvent, InboundEvent.received_at < cutoff)
        threads = {(a.platform, a.channel, a.thread) for a in old if a.thread}
        recent = select(Answer.platform, Answer.channel, Answer.thread).where(Answer.created_at >= cutoff)
        live = {(p, c, t) for p, c, t in (await s.execute(recent)).all()}
    await _forget_threads(answerer, [], {f"{p}:{c}:{t}" for p, c, t in threads - live}, erased)
    if erased.answers or erased.events:
        log.info("retention (%d days): removed %s", days, erased)
    return erased


async def _approved_on(s: AsyncSession, answer_ids: Sequence[str]) -> list[int]:
    found = await s.scalars(
        select(Correction.id).where(Correction.answer_id.in_(answer_ids), Correction.status == "approved")
    )
    return list(found)


async def _delete_answers(s: AsyncSession, ids: Sequence[str], erased: Erased) -> None:
    """Answers and what hangs on them (SQLite does not cascade without its foreign-key pragma)."""
    for start in range(0, len(ids), 500):  # bounded IN lists
        chunk = list(ids[start : start + 500])
        erased.votes += await _count_delete(s, Vote, Vote.answer_id.in_(chunk))
        erased.corrections += await _count_delete(s, Correction, Correction.answer_id.in_(chunk))
        await _count_delete(s, AnswerMessage, AnswerMessage.answer_id.in_(chunk))
        erased.answers += await _count_delete(s, Answer, Answer.id.in_(chunk))


async def _count_delete(s: AsyncSession, model: Any, *where: Any) -> int:
    result = await s.execute(delete(model).where(*where))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def _forget_threads(answerer: Answerer, verified: list[int], threads: set[str], erased: Erased) -> None:
    for correction_id in verified:
        await answerer.verified.remove(correction_id)
    for thread in sorted(threads):
        await answerer.checkpointer.adelete_thread(thread)
    erased.conversations += len(threads)
