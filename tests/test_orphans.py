"""Every question answered, once, across replicas: SIGKILL a `kbot serve` mid-answer and the other
server on the same PostgreSQL answers the orphaned question, exactly once."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import aiohttp
import pytest
from sqlalchemy import select

from kbot.db import Database
from kbot.db.models import InboundEvent
from tests.conftest import EXAMPLES
from tests.fake_openai import fake_openai_server
from tests.fake_slack import SECRET, event_body, fake_slack_server, sign, wait_until
from tests.kbot_process import KBOT, free_port, kbot, wait_healthy

EVENT = {
    "type": "app_mention",
    "user": "U1",
    "channel": "C1",
    "ts": "1700000000.000200",
    "text": "<@UBOT> How many days of sick leave do I get?",
}
KEY = "slack:msg:C1:1700000000.000200"


async def _deliver(url: str) -> None:
    body = event_body(EVENT, "EvOrphan")
    headers = {"Content-Type": "application/json", **sign(body)}
    async with (
        aiohttp.ClientSession() as session,
        session.post(url + "/slack/events", data=body, headers=headers) as r,
    ):
        assert r.status == 200


@pytest.mark.postgres
async def test_an_orphaned_question_is_answered_after_sigkill_exactly_once(
    tmp_path: Path, own_postgres: str
) -> None:
    gate = asyncio.Event()
    async with fake_slack_server() as slack, fake_openai_server(gate=gate) as model:
        env = {
            **os.environ,
            "PYTHONPATH": str(Path.cwd()),
            "KBOT_DATABASE_URL": own_postgres,
            "KBOT_MODEL_BACKEND": "openai",
            "KBOT_MODEL_URL": model.url,
            "KBOT_BASE_MODEL": "served-base",
            "KBOT_SLACK_SIGNING_SECRET": SECRET,
            "KBOT_SLACK_BOT_TOKEN": "xoxb-orphans",
            "KBOT_SLACK_API_URL": slack.url + "/api/",
            "KBOT_CLAIM_LEASE_S": "2",
        }
        env.pop("KBOT_QDRANT_URL", None)
        shutil.copytree(EXAMPLES, tmp_path / "handbook")
        ingested = kbot("ingest", "handbook", "-c", "hr", cwd=tmp_path, env={**env, "KBOT_DATA_DIR": "a"})
        assert ingested.returncode == 0, ingested.stderr
        shutil.copytree(tmp_path / "a" / "qdrant", tmp_path / "b" / "qdrant")  # each replica its shard
        servers = {}
        for name in ("a", "b"):
            port, log = free_port(), tmp_path / f"{name}.log"
            proc = subprocess.Popen(
                [*KBOT, "serve", "--port", str(port)],
                cwd=tmp_path,
                env={**env, "KBOT_DATA_DIR": name},
                stderr=log.open("w"),
                text=True,
            )
            servers[name] = (f"http://127.0.0.1:{port}", proc, log)
        try:
            for url, proc, log in servers.values():
                await wait_healthy(url, proc, timeout=120, log=log)
            (a_url, a, _), (b_url, b, b_log) = servers["a"], servers["b"]
            await _deliver(a_url)
            await wait_until(lambda: len(model.requests) == 1, timeout=60)  # a is mid-answer
            await _deliver(b_url)  # the same question again while a lives: b must not answer it
            await wait_until(lambda: "already handled" in b_log.read_text(), timeout=30)
            a.send_signal(signal.SIGKILL)
            a.wait(timeout=30)
            gate.set()

            def answers() -> list[dict[str, object]]:
                return [c.params for c in slack.named("chat.stopStream") if "Sources" in json.dumps(c.params)]

            await wait_until(lambda: bool(answers()), timeout=90)  # b's sweep found the orphan
            [final] = answers()
            assert final["channel"] == "C1" and "leave-policy.md" in json.dumps(final["blocks"])
            [start] = slack.named("chat.startStream")
            assert start.params["thread_ts"] == EVENT["ts"] and "10 days" in start.params["markdown_text"]
            assert len(model.requests) == 2  # a's, cut short, and b's
            assert "answering it here" in b_log.read_text()
            db = Database(own_postgres)
            try:
                async with db.session() as s:
                    row = (await s.execute(select(InboundEvent).where(InboundEvent.key == KEY))).scalar_one()
                # Settled: no sweep of any replica can take it again.
                assert row.state == "answered" and row.payload is None and row.lease_until is None
            finally:
                await db.close()
        finally:
            for _, proc, _ in servers.values():
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(timeout=60)
        assert b.returncode == 0, b_log.read_text()


@pytest.mark.postgres
def test_replicas_starting_together_on_a_fresh_database_all_get_conversation_memory(
    tmp_path: Path, own_postgres: str
) -> None:
    """Four servers' conversation memory set up at once: one creates the tables, none fails or hangs."""
    import sys

    script = (
        "import asyncio, sys\n"
        "from agent.memory import open_memory\n"
        "from kbot.settings import Settings\n"
        "async def main():\n"
        "    async with open_memory(Settings(database_url=sys.argv[1], data_dir=sys.argv[2])):\n"
        "        pass\n"
        "asyncio.run(main())\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path.cwd())}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, own_postgres, str(tmp_path)],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], errors
