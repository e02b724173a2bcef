"""Retrain safety: `kbot nightly` killed (SIGKILL, a real child process) at each stage leaves the
active adapter as it was; the next run marks the killed one failed, cleans up after it and goes on
at once, without waiting for the lock's lease — on SQLite and on PostgreSQL.

The child runs with ``-v``; the test waits for the line each stage logs and kills it there. For
promotion it first holds the database (SQLite: the write lock; PostgreSQL: the candidate's row),
so the child is killed inside its promoting transaction, never after it committed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from agent.adapters import AdapterRegistry
from finetune.joblock import LEASE, Lease, LockLost, acquire, fence, gone, holder_id, release
from finetune.nightly import LOCK, NightlyConfig, run_nightly
from finetune.recovery import INTERRUPTED, STAGING
from finetune.train import TrainConfig, train_sft
from finetune.votes import VoteLog
from kbot.db import Database
from kbot.db.models import Answer, JobLock, TrainingRun, utcnow
from kbot.settings import Settings
from knowledge.embeddings import Embedder
from tests.conftest import clear_tables
from tests.kbot_process import KBOT
from tests.test_export import approve_all
from tests.test_training import FACTS, cite_pairs

# --- the lock, in-process -----------------------------------------------------------------------


async def test_lock_refuses_live_holders_and_takes_over_stopped_ones(database: Database) -> None:
    me = holder_id()
    assert await acquire(database, "job", me)
    assert not await acquire(database, "job", holder_id())  # this very process: alive
    await release(database, "job", me)

    elsewhere = "other-host:4242:0123456789ab:token"  # its pid means nothing here: the lease decides
    assert await acquire(database, "job", elsewhere)
    assert not await acquire(database, "job", me) and not gone(elsewhere)
    async with database.session() as s:
        await s.execute(update(JobLock).values(expires_at=utcnow() - LEASE))
    assert await acquire(database, "job", me)
    await release(database, "job", me)

    # A holder here whose process is gone (reaped, or killed and not yet reaped) loses it at once.
    for reap in (True, False):
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        child.send_signal(signal.SIGKILL)
        if reap:
            child.wait()
        else:
            while Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                time.sleep(0.01)
        ghost = me.replace(f":{os.getpid()}:", f":{child.pid}:")
        assert gone(ghost)
        assert await acquire(database, "job", ghost)
        assert await acquire(database, "job", me)  # well inside the ghost's lease
        await release(database, "job", me)
        child.wait()


async def test_of_runs_starting_together_exactly_one_gets_the_lock(database: Database) -> None:
    url = database.url.render_as_string(hide_password=False)
    replicas = [Database(url) for _ in range(4)]  # one engine each, as separate processes have
    try:
        holders = [holder_id() for _ in replicas]
        won = await asyncio.gather(*(acquire(db, "job", h) for db, h in zip(replicas, holders, strict=True)))
        assert sum(won) == 1
        await release(database, "job", holders[won.index(True)])
    finally:
        for db in replicas:
            await db.close()


async def test_lease_is_renewed_and_a_lost_lock_stops_the_holder(database: Database) -> None:
    me = holder_id()
    assert await acquire(database, "job", me)

    async def expiry() -> Any:
        async with database.session() as s:
            return await s.scalar(select(JobLock.expires_at).where(JobLock.holder == me))

    first = await expiry()
    with Lease(database, "job", me, every=0.05) as lease:
        deadline = time.monotonic() + 10
        while await expiry() == first and time.monotonic() < deadline:
            time.sleep(0.05)
        assert await expiry() != first, "the lease was not renewed"
        lease.check()
        async with database.session() as s:  # someone took over (our lease had lapsed, say)
            await s.execute(update(JobLock).values(holder="thief"))
        assert lease.lost.wait(10)
        with pytest.raises(LockLost, match="lost its lock"):
            lease.check()
    async with database.session() as s:
        assert not await fence(s, "job", me)  # so it cannot promote either
    await release(database, "job", "thief")


@pytest.mark.slow
async def test_a_run_start_marks_runs_left_running_failed_and_cleans_up(
    database: Database, sql_url: str, tmp_path: Path, embedder: Embedder, base_model_dir: str
) -> None:
    from agent.answering import Answerer
    from knowledge.base import KnowledgeBase

    settings = Settings(data_dir=tmp_path / "data", base_model=base_model_dir, database_url=sql_url)
    adapters = settings.data_dir / "adapters"
    killed = [
        TrainingRun(status="running"),
        *(TrainingRun(status="running", candidate=c) for c in ("dpo-a", "dpo-b")),
    ]
    async with database.session() as s:
        s.add_all(killed)
    for run in killed:  # what each left: training files; a candidate registered, or not yet
        (adapters / f"{STAGING}{run.id}" / "dpo").mkdir(parents=True)
    for name in ("dpo-a", "dpo-b", f"{STAGING}999"):
        (adapters / name).mkdir(parents=True, exist_ok=True)
        (adapters / name / "adapter_config.json").write_text("{}")
    await AdapterRegistry(database).register("dpo-a", base_model="m", path=adapters / "dpo-a")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert await acquire(database, LOCK, holder_id().replace(f":{os.getpid()}:", f":{dead.pid}:"))
    kb = await KnowledgeBase.open(settings, embedder=embedder)
    answerer = await Answerer.open(settings, kb=kb)
    try:
        run = await run_nightly(settings, answerer, NightlyConfig())
    finally:
        await answerer.close()
        await kb.close()
    assert run.status == "skipped"  # no feedback; but first it cleaned up
    async with database.session() as s:
        rows = {r.id: r for r in await s.scalars(select(TrainingRun))}
    for old in killed:
        assert rows[old.id].status == "failed" and rows[old.id].finished_at is not None
        assert rows[old.id].error.startswith(f"{INTERRUPTED}; noticed by run {run.id}")
    assert rows[killed[1].id].error.endswith("its candidate dpo-a stays registered, inactive")
    assert sorted(p.name for p in adapters.iterdir()) == ["dpo-a"]
    [kept] = await AdapterRegistry(database).list()
    assert kept.version == "dpo-a" and not kept.active


# --- real kills ---------------------------------------------------------------------------------

# (stage, the line after which the child is killed); promotion is special, see kill_at().
STAGES = [
    ("export", r"nightly run \d+: exported"),
    ("sft", r"sft step 1/"),
    ("dpo", r"dpo step 1/"),
    ("registered", r"nightly run \d+: registered candidate"),
    ("evaluation", r"nightly run \d+: evaluating"),
    ("promotion", r"promoting it"),
]


class Child:
    """`kbot -v nightly` in a child process, its log lines collected as they come."""

    def __init__(self, world: World) -> None:
        args = [*KBOT, "-v", "nightly", "--min-pairs", "5", "--steps", "1", "--from", "base"]
        self.proc = subprocess.Popen(
            args, cwd=world.root, env=world.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.lines: list[str] = []
        self.stdout = ""
        self._changed = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read, args=(s,), daemon=True) for s in ("stderr", "stdout")
        ]
        for t in self._readers:
            t.start()

    def _read(self, name: str) -> None:
        stream = getattr(self.proc, name)
        for line in stream:
            with self._changed:
                if name == "stdout":
                    self.stdout += line
                else:
                    self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, pattern: str, timeout: float = 300) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    if m := re.search(pattern, line):
                        return m
                ended = self.proc.poll() is not None and not any(t.is_alive() for t in self._readers)
                if ended or time.monotonic() > deadline:
                    pytest.fail(f"no line matching {pattern!r}; the child said:\n{self.tail()}")
                self._changed.wait(0.2)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()  # reaped, as cron or a shell would

    def finish(self, timeout: float = 400) -> int:
        code = self.proc.wait(timeout)
        for t in self._readers:
            t.join(10)
        return code

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.lines[-n:]) + "\n" + self.stdout


@dataclass
class World:
    """A data folder and SQL store with feedback and an active adapter, shared by a chain of runs."""

    root: Path
    settings: Settings
    db: Database
    env: dict[str, str]
    active: str
    files: dict[str, str]
    killed: list[tuple[int, str]] = field(default_factory=list)  # (run id, stage)


def digest(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()
    }


async def seed(db: Database) -> None:
    """👍 on answers that cite their source, 👎 on the same without; some corrections too."""
    votes = VoteLog(db)
    for i, row in enumerate(cite_pairs(FACTS[:6])):
        for text, value in ((row["chosen"][0]["content"], 1), (row["rejected"][0]["content"], -1)):
            answer_id = str(uuid.uuid4())
            async with db.session() as s:
                s.add(
                    Answer(
                        id=answer_id, platform="slack", asker="U1", channel="C1", thread=answer_id,
                        collections=["hr"], question=row["prompt"][-1]["content"], search_query="q",
                        messages=row["prompt"], retrieved=[], answer=text, citations=[], status="ok",
                        base_model="m", latency_ms=1,
                    )
                )  # fmt: skip
            await votes.vote(
                answer_id=answer_id, platform="slack", voter=f"U{i}", value=value, origin="button"
            )
            if value < 0 and i % 6 == 0:
                await votes.correct(
                    answer_id=answer_id, platform="slack", author="U9", text=f"{text} [1] (handbook)"
                )
    await approve_all(db)  # reviewed: only approved corrections are trained on


HANDBOOK = "# Leave policy\n\nEmployees get 27 vacation days per year.\n"
# A canned answer with no fact in it, a refusal the check also calls degenerate: the candidate,
# a fresh LoRA that answers like the base model, beats it on the golden fact and cannot regress.
CANNED = "I do not know. I do not know. I do not know. I do not know."


async def make_world(root: Path, base_model_dir: str, sql_url: str | None) -> World:
    from knowledge.base import KnowledgeBase

    settings = Settings(data_dir=root / "state", base_model=base_model_dir, database_url=sql_url)
    db = Database(settings.sql_url)
    await db.migrate()
    await clear_tables(db)
    await seed(db)
    docs = root / "docs"
    docs.mkdir()
    (docs / "leave.md").write_text(HANDBOOK)
    kb = await KnowledgeBase.open(settings)
    try:
        await kb.ingest([str(docs)], "hr")
    finally:
        await kb.close()  # Qdrant Edge: one process at a time, and the children need it
    golden = {"question": "How many vacation days do I get?", "collections": ["hr"], "facts": ["27"]}
    (settings.data_dir / "golden.jsonl").write_text(json.dumps(golden) + "\n")
    # The active adapter answers everything with the canned line, what tonight's run fixes.
    canned = [
        {"messages": [*r["prompt"], {"role": "assistant", "content": CANNED}]} for r in cite_pairs(FACTS)
    ]
    path = settings.data_dir / "adapters" / "seed"
    train_sft(
        canned,
        base_model=base_model_dir,
        out=path,
        config=TrainConfig(steps=8, batch_size=4, max_length=192, learning_rate=3e-3),
        init_adapter=None,
    )
    registry = AdapterRegistry(db)
    await registry.register("seed", base_model=base_model_dir, path=path)
    await registry.activate("seed")
    env = {**os.environ, "KBOT_DATA_DIR": str(settings.data_dir), "KBOT_BASE_MODEL": base_model_dir}
    env["KBOT_MAX_NEW_TOKENS"] = "24"
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    env.pop("KBOT_QDRANT_URL", None)
    env.pop("KBOT_DATABASE_URL", None)
    if sql_url:
        env["KBOT_DATABASE_URL"] = sql_url
    return World(root, settings, db, env, "seed", digest(path))


@pytest.fixture(scope="module")
async def sqlite_world(tmp_path_factory: pytest.TempPathFactory, base_model_dir: str) -> AsyncIterator[World]:
    world = await make_world(tmp_path_factory.mktemp("kill-sqlite"), base_model_dir, None)
    yield world
    await world.db.close()


@pytest.fixture(scope="module")
async def postgres_world(
    tmp_path_factory: pytest.TempPathFactory, base_model_dir: str, postgres_url: str
) -> AsyncIterator[World]:
    world = await make_world(tmp_path_factory.mktemp("kill-postgres"), base_model_dir, postgres_url)
    yield world
    await clear_tables(world.db)
    await world.db.close()


async def runs(world: World) -> dict[int, TrainingRun]:
    async with world.db.session() as s:
        return {r.id: r for r in await s.scalars(select(TrainingRun))}


def hold_database(world: World, child: Child) -> Any:
    """Keep the child from committing its promotion: it will be killed while it waits."""
    url = world.settings.sql_url
    if url.startswith("sqlite"):
        # From here on the child writes only its lease and the evaluation's answer log, which it
        # lets go when the store is busy (the report keeps those answers).
        child.wait_for(r"nightly run \d+: evaluating")
        lite = sqlite3.connect(url.split("///", 1)[1], timeout=60, isolation_level=None)
        lite.execute("BEGIN IMMEDIATE")  # the write lock: its promoting transaction must wait
        child.wait_for(r"promoting it")
        time.sleep(1)
        return lite
    import psycopg

    dsn = world.db.url.set(drivername="postgresql").render_as_string(hide_password=False)
    candidate = child.wait_for(r"registered candidate (\S+)")[1]
    conn = psycopg.connect(dsn)
    conn.execute("SELECT 1 FROM adapters WHERE version = %s FOR UPDATE", [candidate])
    child.wait_for(r"promoting it")
    # Wait until the child's transaction is inside the UPDATEs: the old adapter already marked
    # inactive (uncommitted), the candidate's row waiting for our lock.
    with psycopg.connect(dsn, autocommit=True) as watch:
        deadline = time.monotonic() + 60
        while not watch.execute(
            "SELECT 1 FROM pg_stat_activity"
            " WHERE wait_event_type = 'Lock' AND query ILIKE 'UPDATE adapters SET%%'"
        ).fetchone():
            assert time.monotonic() < deadline, "the child never reached the promoting UPDATE"
            time.sleep(0.1)
    return conn


async def kill_at(world: World, stage: str, line: str) -> None:
    child = Child(world)
    try:
        me = int(child.wait_for(r"nightly run (\d+): started")[1])
        if world.killed:  # the previous victim's lock is taken over at once, not after its lease
            child.wait_for(r"took over the nightly lock from \S+: its process is gone")
            child.wait_for(rf"run {world.killed[-1][0]} was left running; marked failed")
        held = hold_database(world, child) if stage == "promotion" else None
        child.wait_for(line)
    finally:
        child.kill()
    if held is not None:
        held.rollback()
        held.close()

    found = await runs(world)
    assert found[me].status == "running", child.tail()  # it could not write anything more
    for old, old_stage in world.killed:
        assert found[old].status == "failed", f"run {old} (killed at {old_stage}) is {found[old].status}"
        assert found[old].error.startswith(INTERRUPTED), found[old].error
    adapters = {a.version: a for a in await AdapterRegistry(world.db).list()}
    assert [v for v, a in adapters.items() if a.active] == [world.active], "the active adapter changed"
    assert digest(world.settings.data_dir / "adapters" / world.active) == world.files
    for a in adapters.values():  # whatever is registered is complete
        assert {"adapter_config.json", "adapter_model.safetensors"} <= set(digest(a.path)), a.version
    if stage in ("sft", "dpo"):  # half-written, under a name nothing registers
        assert (world.settings.data_dir / "adapters" / f"{STAGING}{me}").is_dir()
    if stage in ("registered", "evaluation", "promotion"):
        candidate = found[me].candidate
        assert candidate in adapters and not adapters[candidate].active
    async with world.db.session() as s:  # the killed holder's lease is still valid: not waited out
        lock = await s.scalar(select(JobLock).where(JobLock.expires_at > utcnow()))
    assert lock is not None and f":{child.proc.pid}:" in lock.holder
    world.killed.append((me, stage))


async def next_run_succeeds(world: World) -> None:
    child = Child(world)
    try:
        code = child.finish()
    finally:
        child.kill()
    assert code == 0, child.tail()
    me = int(child.wait_for(r"nightly run (\d+): started")[1])
    child.wait_for(r"took over the nightly lock from \S+: its process is gone")
    # The last line of stdout (the trainer prints its metrics there too).
    assert re.search(rf"^Run {me}: promoted — .* now active \(\d+ s\)$", child.stdout, re.M), child.tail()
    found = await runs(world)
    for old, stage in world.killed:
        assert found[old].status == "failed" and found[old].error.startswith(INTERRUPTED), (stage, found[old])
        if stage in ("registered", "evaluation", "promotion"):
            assert found[old].error.endswith(
                f"its candidate {found[old].candidate} stays registered, inactive"
            )
    if world.killed:  # the last one is this run's to notice; earlier ones, the runs that followed them
        child.wait_for(
            rf"run {world.killed[-1][0]} was left running; marked failed: {re.escape(INTERRUPTED)}"
        )
    adapters = {a.version: a for a in await AdapterRegistry(world.db).list()}
    left = {p.name for p in (world.settings.data_dir / "adapters").iterdir()}
    assert left == set(adapters), "only registered adapters remain on disk"
    assert found[me].status == "promoted", found[me].decision  # the seed adapter's canned answer loses
    assert [v for v, a in adapters.items() if a.active] == [found[me].candidate]
    async with world.db.session() as s:
        assert await s.scalar(select(JobLock)) is None


@pytest.mark.slow
@pytest.mark.parametrize(("stage", "line"), STAGES, ids=[s for s, _ in STAGES])
async def test_killed_run_sqlite(sqlite_world: World, stage: str, line: str) -> None:
    await kill_at(sqlite_world, stage, line)


@pytest.mark.slow
async def test_next_run_succeeds_sqlite(sqlite_world: World) -> None:
    await next_run_succeeds(sqlite_world)


# Each child run costs a minute or more: on PostgreSQL, the stage where its transactions matter.
PG_STAGES = [s for s in STAGES if s[0] == "promotion"]


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.parametrize(("stage", "line"), PG_STAGES, ids=[s for s, _ in PG_STAGES])
async def test_killed_run_postgres(postgres_world: World, stage: str, line: str) -> None:
    await kill_at(postgres_world, stage, line)


@pytest.mark.slow
@pytest.mark.postgres
async def test_next_run_succeeds_postgres(postgres_world: World) -> None:
    await next_run_succeeds(postgres_world)
