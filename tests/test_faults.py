"""Faults injected for real while the server runs: the asker hears about it within 10 s, feedback
that arrives meanwhile is kept and written when the part is back, and the server recovers
without a restart.

- PostgreSQL: the test's own database refuses connections and its sessions are killed.
- SQLite: the data folder is a tmpfs, remounted read-only under the running server.
- The model server is stopped, then started again on the same port.
- The vector store (a Qdrant server URL) does not answer.
- Slack's Web API answers slowly.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from aiohttp import web
from sqlalchemy import select
from sqlalchemy.engine import make_url

from kbot.db.models import Answer, AnswerMessage, Vote
from knowledge.embeddings import Embedder
from tests.fake_openai import FakeOpenAI
from tests.fake_slack import wait_until
from tests.kbot_process import free_port
from tests.postgres import cut_off, reopen
from tests.slack_env import SlackEnv, mention, slack_env
from tests.test_slack import reaction
from tests.test_web_api import answer_of, events

QUESTION = "How many days of sick leave do I get?"
DEADLINE_S = 10.0


async def web_ask(
    env: SlackEnv, cookies: dict[str, str] | None = None
) -> tuple[list[Any], dict[str, str], float]:
    started = time.monotonic()
    body = {"id": uuid.uuid4().hex, "conversation": uuid.uuid4().hex, "text": QUESTION}
    response = await env.client.post("/api/chat", json=body, cookies=cookies or {})
    stream = await events(response)
    jar = (
        {"kbot_visitor": response.cookies["kbot_visitor"].value} if "kbot_visitor" in response.cookies else {}
    )
    return stream, cookies or jar, time.monotonic() - started


async def slack_answer(env: SlackEnv, user: str = "U1") -> tuple[str, float]:
    """Mention kbot; the text of the last message it posted or updated in reply, and how long it took."""
    started = time.monotonic()
    before = len(env.slack.calls)
    done = env.stats["answered"] + env.stats["failed"] + 1
    await env.event(mention(QUESTION, user=user))

    def final() -> str:
        for call in env.slack.calls[before:]:
            text = json.dumps(call.params, ensure_ascii=False)
            shows = call.method in ("chat.postMessage", "chat.update", "chat.startStream", "chat.stopStream")
            if shows and ("Sources" in text or "Sorry" in text):
                return text
        return ""

    await wait_until(lambda: bool(final()), timeout=30)
    took = time.monotonic() - started
    # The reply is shown; wait for the rest of the handling (recording its messages) to end too.
    await wait_until(lambda: env.stats["answered"] + env.stats["failed"] == done, timeout=30)
    return final(), took


async def votes(env: SlackEnv) -> set[tuple[str, str, int, str]]:
    async with env.runtime.service.answerer.kb.db.session() as s:
        return {(v.answer_id, v.voter, v.value, v.origin) for v in await s.scalars(select(Vote))}


async def vote_web(env: SlackEnv, answer_id: str, cookies: dict[str, str], value: int) -> int:
    body = {"answer_id": answer_id, "kind": "vote", "value": value}
    return (await env.client.post("/api/feedback", json=body, cookies=cookies)).status


async def readiness(env: SlackEnv) -> tuple[int, list[str]]:
    response = await env.client.get("/readyz")
    return response.status, (await response.json()).get("down", [])


async def outage_and_recovery(env: SlackEnv, *, down: Any, up: Any, unready: bool = False) -> None:
    """The shared script: answer, break the store, vote and ask, repair, check nothing was lost.
    ``unready``: the outage also makes ``/readyz`` say the database is down (and back after)."""
    assert await readiness(env) == (200, [])
    stream, cookies, _ = await web_ask(env)
    web_answer = answer_of(stream)["answer_id"]
    await slack_answer(env)
    slack_ts = env.shown()[-1]["ts"]
    async with env.runtime.service.answerer.kb.db.session() as s:
        visitor = (await s.get(Answer, web_answer)).asker  # type: ignore[union-attr]
        slack_answer_id = await s.scalar(
            select(AnswerMessage.answer_id).where(AnswerMessage.message_id == slack_ts)
        )
    assert slack_answer_id
    spool = env.runtime.service.spool
    assert spool is not None

    await down()
    try:
        # Votes during the outage: acknowledged and kept, in order (the web vote changes its mind).
        assert await vote_web(env, web_answer, cookies, 1) == 202
        assert await vote_web(env, web_answer, cookies, -1) == 202
        env.slack.reactions[("C1", slack_ts)] = {"+1": ["U2"]}
        assert (await env.event(reaction("reaction_added", "+1", slack_ts, user="U2"))).status == 200
        await wait_until(lambda: spool.pending == 3)
        # Questions during the outage: a plain message, quickly, on both platforms.
        stream, _, took = await web_ask(env, cookies)
        notices = [d["text"] for e, d in stream if e == "notice"]
        assert took < DEADLINE_S and any("database is not available" in n for n in notices), notices
        text, took = await slack_answer(env, user="U9")
        assert took < DEADLINE_S and "database is not available" in text, text
        if unready:  # the load balancer stops sending people here; liveness stays
            status = await poll_readiness(env, 503)
            assert status == (503, ["database"])
            assert (await env.client.get("/healthz")).status == 200
    finally:
        await up()
    if unready:
        assert await poll_readiness(env, 200) == (200, [])

    # Back: the kept votes are written (the last web vote wins) and questions are answered again.
    await wait_until(lambda: spool.pending == 0, timeout=30)
    assert await votes(env) == {(web_answer, visitor, -1, "web"), (slack_answer_id, "U2", 1, "reaction")}
    stream, _, _ = await web_ask(env, cookies)
    assert answer_of(stream)["status"] == "ok"
    text, _ = await slack_answer(env, user="U8")
    assert "Sources" in text


async def poll_readiness(env: SlackEnv, status: int, timeout: float = 20.0) -> tuple[int, list[str]]:
    """``/readyz`` until it answers ``status`` (its verdict is cached a few seconds)."""
    deadline = time.monotonic() + timeout
    while (found := await readiness(env))[0] != status and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    return found


async def test_postgres_outage(tmp_path: Path, embedder: Embedder, own_postgres: str) -> None:
    name = str(make_url(own_postgres).database)

    async def down() -> None:
        cut_off(name)

    async def up() -> None:
        reopen(name)

    async with slack_env(tmp_path, embedder, database_url=own_postgres) as env:
        await outage_and_recovery(env, down=down, up=up, unready=True)


async def test_sqlite_locked_by_another_process(tmp_path: Path, embedder: Embedder) -> None:
    """Another program (a backup, a stuck sqlite3 shell) holds the database's write lock."""
    holder: subprocess.Popen[str] | None = None
    script = (
        "import sqlite3, sys\n"
        "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "c.execute('BEGIN EXCLUSIVE')\n"
        "print('locked', flush=True)\n"
        "sys.stdin.read()\n"
    )

    async with slack_env(tmp_path, embedder) as env:
        database = env.settings.data_dir / "kbot.db"

        async def down() -> None:
            nonlocal holder
            holder = subprocess.Popen(
                [sys.executable, "-c", script, str(database)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"

        async def up() -> None:
            assert holder is not None
            holder.communicate("", timeout=10)

        await outage_and_recovery(env, down=down, up=up)


@asynccontextmanager
async def model_server(port: int = 0) -> AsyncIterator[tuple[FakeOpenAI, int]]:
    """The fake OpenAI-compatible server on ``port`` (0: any), so it can come back where it was."""
    fake = FakeOpenAI()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", fake.chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield fake, port
    finally:
        await runner.cleanup()


async def test_model_server_killed_and_back(tmp_path: Path, embedder: Embedder) -> None:
    first = model_server()
    _, port = await first.__aenter__()
    try:
        async with slack_env(tmp_path, embedder, model_url=f"http://127.0.0.1:{port}/v1") as env:
            stream, cookies, _ = await web_ask(env)
            assert answer_of(stream)["status"] == "ok"

            await first.__aexit__(None, None, None)  # the model server is gone
            stream, _, took = await web_ask(env, cookies)
            failed = answer_of(stream)
            assert failed["status"] == "error" and took < DEADLINE_S
            assert "language model is not available" in failed["text"]
            assert "127.0.0.1" not in json.dumps(stream)  # where it runs is for the log only
            text, took = await slack_answer(env, user="U5")
            assert "Sorry" in text and took < DEADLINE_S and "127.0.0.1" not in text
            assert await poll_readiness(env, 503) == (503, ["model"])
            response = await env.client.get("/readyz")
            assert "127.0.0.1" not in await response.text()

            async with model_server(port):  # back where it was: answers resume, no restart
                stream, _, _ = await web_ask(env, cookies)
                assert answer_of(stream)["status"] == "ok"
                assert await poll_readiness(env, 200) == (200, [])
    finally:
        await first.__aexit__(None, None, None)


async def test_vector_store_unreachable(tmp_path: Path, embedder: Embedder) -> None:
    """The documents are catalogued (SQL), but the Qdrant server that holds their vectors is down."""
    async with slack_env(tmp_path, embedder) as env:
        settings = env.settings.model_copy(update={"qdrant_url": f"http://127.0.0.1:{free_port()}"})
    from bot.server import build_app, open_runtime
    from knowledge.base import KnowledgeBase

    kb = await KnowledgeBase.open(settings)
    try:
        async with open_runtime(settings, kb=kb, answerer=None) as runtime:
            from aiohttp.test_utils import TestClient, TestServer

            client = TestClient(TestServer(build_app(runtime)))
            await client.start_server()
            try:
                started = time.monotonic()
                body = {"id": uuid.uuid4().hex, "conversation": uuid.uuid4().hex, "text": QUESTION}
                stream = await events(await client.post("/api/chat", json=body))
                took = time.monotonic() - started
            finally:
                await client.close()
    finally:
        await kb.close()
    answer = answer_of(stream)
    assert answer["status"] == "error" and took < DEADLINE_S
    assert "document search is not available" in answer["text"] and "127.0.0.1" not in json.dumps(stream)


async def test_slow_slack_api_still_acks_at_once_and_answers(tmp_path: Path, embedder: Embedder) -> None:
    async with slack_env(tmp_path, embedder) as env:
        env.slack.delay_s = 1.0  # every Web API call takes 1 s
        started = time.monotonic()
        response = await env.event(mention(QUESTION))
        assert response.status == 200 and time.monotonic() - started < 1.0  # Slack's 3 s ack rule
        await wait_until(lambda: env.stats["answered"] == 1, timeout=60)
        final = [c for c in env.slack.calls if "Sources" in json.dumps(c.params)]
        assert final
