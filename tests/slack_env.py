"""A running kbot server wired to a fake Slack and a fake model server, for the Slack tests and bench."""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer

from bot.server import Runtime, build_app, open_runtime
from kbot.settings import Settings
from knowledge.base import KnowledgeBase
from knowledge.embeddings import Embedder
from tests.fake_openai import FakeOpenAI, fake_openai_server
from tests.fake_slack import (
    BOT_USER,
    SECRET,
    FakeSlack,
    event_body,
    fake_slack_server,
    interaction_body,
    sign,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "handbook"
WIKI = "https://wiki.example.com/handbook/"
_ids = itertools.count(1)
SALARY_DOC = "# Salary bands\n\nEngineers at level 2 earn between 70,000 and 85,000 euros per year.\n"


@dataclass
class SlackEnv:
    slack: FakeSlack
    model: FakeOpenAI
    runtime: Runtime
    client: TestClient  # type: ignore[type-arg]
    settings: Settings

    @property
    def stats(self) -> Any:
        return self.runtime.service.stats

    async def send(
        self, body: str, *, headers: dict[str, str] | None = None, form: bool = False
    ) -> ClientResponse:
        content_type = "application/x-www-form-urlencoded" if form else "application/json"
        return await self.client.post(
            "/slack/events",
            data=body.encode(),
            headers={"Content-Type": content_type, **sign(body), **(headers or {})},
        )

    async def event(
        self, event: dict[str, Any], *, event_id: str | None = None, retry: int = 0
    ) -> ClientResponse:
        headers = {"X-Slack-Retry-Num": str(retry), "X-Slack-Retry-Reason": "http_timeout"} if retry else {}
        return await self.send(event_body(event, event_id or f"Ev{next(_ids):06d}"), headers=headers)

    async def interact(self, payload: dict[str, Any]) -> ClientResponse:
        return await self.send(interaction_body(payload), form=True)

    def posted(self) -> list[dict[str, Any]]:
        return [c.params for c in self.slack.named("chat.postMessage")]

    def shown(self) -> list[dict[str, Any]]:
        """Every message kbot shows now, in the order posted: a natively streamed one (its text
        streamed, its blocks from chat.stopStream) or a posted one after its last chat.update;
        deleted ones are gone. Keys: channel, thread_ts, ts, text, blocks, native."""
        deleted = {(c.params["channel"], c.params["ts"]) for c in self.slack.named("chat.delete")}
        out: list[dict[str, Any]] = []
        for call in self.slack.calls:
            p = call.params
            if call.method not in ("chat.startStream", "chat.postMessage") or "_ts" not in p:
                continue
            ts = p["_ts"]
            if (p["channel"], ts) in deleted:
                continue
            if call.method == "chat.startStream":
                stops = [c.params for c in self.slack.named("chat.stopStream") if c.params["ts"] == ts]
                text, blocks = self.slack.streamed(ts), (stops[-1].get("blocks") or []) if stops else []
            else:
                now = self.final(ts) or p
                text, blocks = now.get("text", ""), now.get("blocks") or []
            native = call.method == "chat.startStream"
            out.append(
                {
                    "channel": p["channel"],
                    "thread_ts": p.get("thread_ts"),
                    "ts": ts,
                    "text": text,
                    "blocks": blocks,
                    "native": native,
                    "stopped": not native or bool(stops),
                }
            )
        return out

    def final(self, ts: str) -> dict[str, Any]:
        """What the message ``ts`` shows now: its last update, else how it was posted."""
        updates = [c.params for c in self.slack.named("chat.update") if c.params["ts"] == ts]
        return updates[-1] if updates else {}


def mention(
    text: str, *, user: str = "U1", channel: str = "C1", ts: str | None = None, **extra: Any
) -> dict[str, Any]:
    ts = ts or f"1699999{next(_ids):03d}.000001"
    return {
        "type": "app_mention",
        "user": user,
        "text": f"<@{BOT_USER}> {text}",
        "ts": ts,
        "channel": channel,
        "event_ts": ts,
        **extra,
    }


def message(
    text: str, *, user: str = "U1", channel: str = "C1", ts: str | None = None, **extra: Any
) -> dict[str, Any]:
    ts = ts or f"1699999{next(_ids):03d}.000001"
    return {
        "type": "message",
        "user": user,
        "text": text,
        "ts": ts,
        "channel": channel,
        "event_ts": ts,
        "channel_type": "channel",
        **extra,
    }


def blocks_text(params: dict[str, Any]) -> str:
    return json.dumps(params.get("blocks", []), ensure_ascii=False)


@asynccontextmanager
async def slack_env(
    tmp_path: Path,
    embedder: Embedder,
    *,
    model_url: str | None = None,
    answer: str = "Sick leave is 10 days per year [1].",
    teams_credentials: Any = None,
    **overrides: Any,
) -> AsyncIterator[SlackEnv]:
    async with (
        fake_slack_server(usergroups={"S0HR": ["UHR"]}) as slack,
        fake_openai_server(answer=answer) as model,
    ):
        options: dict[str, Any] = {
            "data_dir": tmp_path / "data",
            "chunk_tokens": 128,
            "chunk_overlap_tokens": 16,
            "model_backend": "openai",
            "model_url": model_url or model.url,
            "base_model": "served-base",
            "model_timeout_s": 10,
            "slack_signing_secret": SECRET,
            "slack_bot_token": "xoxb-test-token",
            "slack_api_url": slack.url + "/api/",
            "slack_update_interval_s": 0,
            "source_links": {str(EXAMPLES) + "/": WIKI},
            "channels": {
                "slack:CALL": {"mention_only": False},
                "slack:COFF": {"enabled": False},
                "slack:CHR": {"groups": ["hr"]},  # the HR team's channel may show hr documents
            },
            "groups": {"slack:S0HR": ["hr"]},
        }
        settings = Settings(**{**options, **overrides})
        kb = await KnowledgeBase.open(settings, embedder=embedder)
        try:
            await kb.ingest([str(EXAMPLES)], "handbook")
            restricted = tmp_path / "restricted"
            restricted.mkdir(exist_ok=True)
            (restricted / "salary-bands.md").write_text(SALARY_DOC)
            await kb.ingest([str(restricted)], "handbook", acl=["hr"])
            async with open_runtime(settings, kb=kb, teams_credentials=teams_credentials) as runtime:
                client = TestClient(TestServer(build_app(runtime)))
                await client.start_server()
                try:
                    yield SlackEnv(slack, model, runtime, client, settings)
                finally:
                    await runtime.service.drain(10)
                    await client.close()
        finally:
            await kb.close()
