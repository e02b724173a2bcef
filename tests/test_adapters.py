"""The adapter registry's promotion history, on SQLite and PostgreSQL: the gate, rollback, one active row.

No model is loaded: an adapter here is a folder holding an ``adapter_config.json``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from typer.testing import CliRunner

from agent.adapters import AdapterRegistry, promote_in
from kbot.db import Database
from kbot.db.models import Adapter
from kbot.errors import AdapterError
from tests.conftest import clear_tables


async def registry_with(db: Database, root: Path, *versions: str) -> AdapterRegistry:
    registry = AdapterRegistry(db)
    for version in versions:
        (root / version).mkdir(parents=True)
        (root / version / "adapter_config.json").write_text("{}")
        await registry.register(version, base_model="m", path=root / version, scores={"fact_hit_rate": 0.5})
    return registry


async def active_version(registry: AdapterRegistry) -> str | None:
    active = await registry.active()
    return active.version if active else None


async def test_rollback_walks_back_through_promotions_then_to_the_base_model(
    database: Database, tmp_path: Path
) -> None:
    registry = await registry_with(database, tmp_path, "v1", "v2", "v3", "v4")
    for version in ("v1", "v2", "v3", "v4"):
        await registry.promote(version, by="test", forced=True)
    walked = [await registry.rollback(by="ops") for _ in range(4)]
    assert walked == ["v3", "v2", "v1", None]
    assert await registry.active() is None
    with pytest.raises(AdapterError, match="The base model already answers and no earlier promotion"):
        await registry.rollback(by="ops")

    history = await registry.history()
    assert [(h.kind, h.version, h.previous) for h in history] == [
        ("promote", "v1", None),
        ("promote", "v2", "v1"),
        ("promote", "v3", "v2"),
        ("promote", "v4", "v3"),
        ("rollback", "v3", "v4"),
        ("rollback", "v2", "v3"),
        ("rollback", "v1", "v2"),
        ("rollback", None, "v1"),
    ]
    assert all(h.forced for h in history[:4]) and not any(h.forced for h in history[4:])
    assert {h.by for h in history[4:]} == {"ops"}
    # A promotion after rollbacks pushes onto what is left: rollback returns to where it was.
    await registry.promote("v3", by="test", forced=True)
    await registry.promote("v4", by="test", forced=True)
    assert await registry.rollback(by="ops") == "v3"
    assert await registry.rollback(by="ops") is None


async def test_rollback_to_a_version_below_the_active_one(database: Database, tmp_path: Path) -> None:
    registry = await registry_with(database, tmp_path, "v1", "v2", "v3", "v4")
    for version in ("v1", "v2", "v3", "v4"):
        await registry.promote(version, by="test", forced=True)
    assert await registry.rollback(to="v2", by="ops") == "v2"
    assert await active_version(registry) == "v2"
    # v3 and v4 were popped: they are no longer below the active one.
    with pytest.raises(AdapterError) as refused:
        await registry.rollback(to="v4", by="ops")
    assert str(refused.value) == (
        "v4 was not promoted before v2, so rollback cannot return to it. You can go back to: v1, base. "
        "To make v4 active anyway, promote it: kbot adapters promote v4"
    )
    with pytest.raises(AdapterError, match="v2 is already active"):
        await registry.rollback(to="v2", by="ops")
    assert await active_version(registry) == "v2"
    assert await registry.rollback(to="base", by="ops") is None
    with pytest.raises(AdapterError, match="The base model already answers"):
        await registry.rollback(to="base", by="ops")
    assert [h.kind for h in await registry.history()][-2:] == ["rollback", "rollback"]


async def test_at_most_one_active_row_is_a_database_constraint(database: Database, tmp_path: Path) -> None:
    registry = await registry_with(database, tmp_path, "v1", "v2")
    await registry.promote("v1", by="test", forced=True)
    with pytest.raises(IntegrityError):
        async with database.engine.begin() as conn:
            await conn.execute(update(Adapter).where(Adapter.version == "v2").values(active=True))
    assert await active_version(registry) == "v1"
    # Deactivating first, as promote_in does, passes the same index in one transaction.
    await registry.promote("v2", by="test", forced=True)
    async with database.session() as s:
        assert list(await s.scalars(select(Adapter.version).where(Adapter.active.is_(True)))) == ["v2"]


async def test_promotion_needs_a_passing_evaluation_against_the_active_version(
    database: Database, tmp_path: Path
) -> None:
    registry = await registry_with(database, tmp_path, "v1", "v2")
    with pytest.raises(AdapterError) as refused:
        await registry.promote("v1", by="cli")
    assert str(refused.value) == (
        "v1 has no recorded evaluation. Evaluate it with: kbot eval v1 --golden FILE, "
        "or promote it anyway with: kbot adapters promote v1 --force."
    )
    await registry.record_evaluation(
        "v1", against="base", passed=False, reasons=["fact_hit_rate 0.2"], by="t"
    )
    with pytest.raises(
        AdapterError, match=r"v1 did not pass its evaluation against base \(fact_hit_rate 0.2\)"
    ):
        await registry.promote("v1", by="cli")
    assert await registry.active() is None and await registry.history() == []

    verdict = await registry.record_evaluation("v1", against="base", passed=True, reasons=[], by="t")
    assert await registry.promote("v1", by="cli") is None
    [promoted] = await registry.history()
    assert (promoted.version, promoted.forced, promoted.evaluation) == ("v1", False, verdict)

    # v2 passed against the base model, but v1 answers now: that evaluation does not count.
    await registry.record_evaluation("v2", against="base", passed=True, reasons=[], by="t")
    with pytest.raises(
        AdapterError, match="v2 was evaluated against base, not against the active adapter v1"
    ):
        await registry.promote("v2", by="cli")
    assert await active_version(registry) == "v1"
    assert await registry.promote("v2", by="cli", forced=True) == "v1"
    forced = (await registry.history())[-1]
    assert (forced.version, forced.previous, forced.forced) == ("v2", "v1", True)
    assert forced.evaluation["against"] == "base"  # the stale verdict it was forced past, kept


async def test_recorded_evaluation_keeps_the_other_scores(database: Database, tmp_path: Path) -> None:
    registry = await registry_with(database, tmp_path, "v1")
    await registry.record_evaluation("v1", against="base", passed=True, reasons=[], by="kbot eval (ops)")
    [info] = await registry.list()
    assert info.scores["fact_hit_rate"] == 0.5
    gate = info.scores["gate"]
    assert isinstance(gate, dict) and set(gate) == {"passed", "against", "reasons", "at", "by"}
    assert (gate["passed"], gate["against"], gate["by"]) == (True, "base", "kbot eval (ops)")
    with pytest.raises(AdapterError, match="No adapter version nope"):
        await registry.record_evaluation("nope", against="base", passed=True, reasons=[], by="t")


async def test_promote_in_belongs_to_the_callers_transaction(database: Database, tmp_path: Path) -> None:
    registry = await registry_with(database, tmp_path, "v1", "v2")

    class JobFailed(Exception):
        pass

    with pytest.raises(JobFailed):
        async with database.session() as s:
            assert await promote_in(s, "v1", by="nightly run 1") is None
            raise JobFailed
    assert await registry.active() is None and await registry.history() == []

    async with database.session() as s:
        assert await promote_in(s, "v1", by="nightly run 2", evaluation={"passed": True}) is None
        assert await promote_in(s, "v2", by="nightly run 2") == "v1"
    assert await active_version(registry) == "v2"
    assert [(h.version, h.previous, h.by) for h in await registry.history()] == [
        ("v1", None, "nightly run 2"),
        ("v2", "v1", "nightly run 2"),
    ]
    with pytest.raises(AdapterError, match="v2 is already active"):
        async with database.session() as s:
            await promote_in(s, "v2", by="again")
    with pytest.raises(AdapterError, match="No adapter version nope is registered"):
        async with database.session() as s:
            await promote_in(s, "nope", by="again")


async def test_concurrent_promotions_leave_one_active_and_a_consistent_history(
    database: Database, tmp_path: Path
) -> None:
    registry = await registry_with(database, tmp_path, "v1", "v2", "v3", "v4", "v5")
    await registry.promote("v1", by="test", forced=True)
    for version in ("v2", "v3"):
        await registry.record_evaluation(version, against="v1", passed=True, reasons=[], by="t")
    outcomes = await asyncio.gather(
        registry.promote("v2", by="a"), registry.promote("v3", by="b"), return_exceptions=True
    )
    # Whichever went second found its evaluation stale: the active version had changed under it.
    refused = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(refused) == 1 and isinstance(refused[0], AdapterError)
    assert "not against the active adapter" in str(refused[0])
    winner = await active_version(registry)
    assert winner in ("v2", "v3") and outcomes.count("v1") == 1

    await asyncio.gather(*(registry.promote(v, by="c", forced=True) for v in ("v4", "v5")))
    await asyncio.gather(registry.rollback(by="d"), registry.rollback(by="e"))
    history = await registry.history()
    for before, after in itertools.pairwise(history):
        assert after.previous == before.version  # each change saw the one before it
    assert history[-1].version == await active_version(registry) == winner
    async with database.session() as s:
        assert len(list(await s.scalars(select(Adapter).where(Adapter.active.is_(True))))) == 1


async def test_activate_is_a_forced_promotion_and_rollback_sees_changes_outside_the_history(
    database: Database, tmp_path: Path
) -> None:
    registry = await registry_with(database, tmp_path, "v1", "v2")
    await registry.activate("v1")
    await registry.activate("v1")  # already active: nothing happens
    [row] = await registry.history()
    assert (row.version, row.by, row.forced) == ("v1", "activate()", True)
    # Code that bypasses the history (an old job) switches to v2; rollback returns to v1.
    async with database.session() as s:
        await s.execute(update(Adapter).values(active=False))
        await s.execute(update(Adapter).where(Adapter.version == "v2").values(active=True))
    assert await registry.rollback(by="ops") == "v1"
    await registry.activate(None)
    assert await registry.active() is None
    assert await registry.rollback(by="ops") == "v1"  # back from the base model to v1


# --- the commands, through typer's runner on the same two databases ---


@pytest.fixture
def cli(sql_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Database]:
    """``kbot`` pointed at ``sql_url`` with adapters v1, v2 and v3 registered (a Database for setup only)."""
    monkeypatch.setenv("KBOT_DATA_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("KBOT_DATABASE_URL", sql_url)
    monkeypatch.delenv("KBOT_QDRANT_URL", raising=False)
    monkeypatch.delenv("KBOT_CONFIG", raising=False)
    db = Database(sql_url)

    async def setup() -> None:
        await db.migrate()
        await registry_with(db, tmp_path / "adapters", "v1", "v2", "v3")
        await db.close()

    asyncio.run(setup())
    yield db

    async def teardown() -> None:
        await clear_tables(db)
        await db.close()

    asyncio.run(teardown())


def kbot(*args: str) -> Any:
    """The CLI in this process; the logging set-up it does (`kbot -v…`) is undone after it, so
    the tests that read log lines later see the process as it was."""
    from bot.cli import app

    loggers = [logging.getLogger(), *(logging.getLogger(n) for n in list(logging.Logger.manager.loggerDict))]
    saved = [(lg, lg.level, lg.handlers[:], lg.disabled) for lg in loggers]
    formatters = [(h, h.formatter, h.filters[:]) for lg in loggers for h in lg.handlers]
    try:
        return CliRunner().invoke(app, list(args))
    finally:
        known = {id(lg) for lg in loggers}
        for name in list(logging.Logger.manager.loggerDict):  # made during the call: as if never set
            made = logging.getLogger(name)
            if id(made) not in known:
                made.setLevel(logging.NOTSET)
        for lg, level, handlers, disabled in saved:
            lg.setLevel(level)
            lg.handlers[:] = handlers
            lg.disabled = disabled
        for handler, formatter, filters in formatters:
            handler.setFormatter(formatter)
            handler.filters[:] = filters


def gate_of(db: Database, version: str) -> dict[str, Any]:
    async def read() -> dict[str, Any]:
        try:
            async with db.session() as s:
                row = await s.scalar(select(Adapter).where(Adapter.version == version))
                assert row is not None
                return dict(row.scores)
        finally:
            await db.close()

    return asyncio.run(read())


def test_cli_promote_refuses_without_an_evaluation_and_records_force(cli: Database) -> None:
    refused = kbot("adapters", "promote", "v1")
    assert isinstance(refused.exception, AdapterError)
    assert "kbot eval v1 --golden FILE" in str(refused.exception) and "--force" in str(refused.exception)
    assert "*" not in kbot("adapters", "list").output

    forced = kbot("adapters", "promote", "v1", "--force")
    assert forced.exit_code == 0, forced.output
    assert forced.output.strip() == (
        "v1 is now active (the base model answered before); forced, without a passing evaluation."
    )
    listing = kbot("adapters", "list").output.splitlines()
    assert listing[0].startswith("* v1  ?  loss=-  fact_hit_rate=0.5  gate: not evaluated")
    [line] = kbot("adapters", "history").output.splitlines()
    assert "promote   v1  (was base)  by kbot adapters promote" in line and line.endswith("forced")


def test_cli_eval_records_the_verdict_that_promote_and_rollback_use(
    cli: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bot import learning_cli
    from finetune.evaluate import Metrics, Report

    assert kbot("adapters", "promote", "v1", "--force").exit_code == 0

    class FakeAnswerer:
        """The evaluation's answer path; only its SQL store is used with the evaluation faked."""

        def __init__(self, db: Database) -> None:
            self.kb = type("KB", (), {"db": db})()

        async def close(self) -> None:
            await self.kb.db.close()

    async def open_answerer(settings: Any) -> FakeAnswerer:
        return FakeAnswerer(Database(settings.sql_url))

    async def evaluate(_answerer: Any, candidate: Any, against: Any, *_: Any, **__: Any) -> Report:
        m = Metrics()
        passed = candidate[0] != "v3"
        return Report(
            candidate[0], against[0], {"candidate": m, "against": m}, passed, [] if passed else ["worse"]
        )

    monkeypatch.setattr(learning_cli, "_open_answerer", open_answerer)
    monkeypatch.setattr("finetune.evaluate.evaluate", evaluate)
    monkeypatch.setattr("agent.base_model.resolve_base_model", lambda name, cache: name)
    golden = tmp_path / "golden.jsonl"
    golden.write_text(
        json.dumps({"question": "Sick leave?", "collections": ["hr"], "facts": ["10 days"]}) + "\n"
    )

    assert kbot("eval", "v2", "--golden", str(golden)).exit_code == 0
    scores = gate_of(cli, "v2")
    assert scores["fact_hit_rate"] == 0.5  # merged, not replaced
    assert {k: scores["gate"][k] for k in ("passed", "against", "reasons")} == {
        "passed": True,
        "against": "v1",
        "reasons": [],
    }
    assert scores["gate"]["by"].startswith("kbot eval")
    # v3 passes against the base model only, and fails against v1: neither lets it replace v2.
    assert kbot("eval", "v3", "--golden", str(golden)).exit_code == 1
    assert gate_of(cli, "v3")["gate"]["passed"] is False

    promoted = kbot("adapters", "promote", "v2")
    assert promoted.exit_code == 0 and promoted.output.strip() == "v2 is now active (was: v1)."
    assert (
        "* v2" in kbot("adapters", "list").output and "gate: passed vs v1" in kbot("adapters", "list").output
    )
    refused = kbot("adapters", "promote", "v3")
    assert isinstance(refused.exception, AdapterError)
    assert "v3 was evaluated against v1, not against the active adapter v2" in str(refused.exception)

    assert kbot("adapters", "rollback").output.strip() == "Rolled back: v1 is active again."
    wrong = kbot("adapters", "rollback", "--to", "v2")
    assert isinstance(wrong.exception, AdapterError) and "You can go back to: base." in str(wrong.exception)
    assert (
        kbot("adapters", "rollback", "--to", "base").output.strip()
        == "Rolled back: the base model answers now."
    )
    empty = kbot("adapters", "rollback")
    assert isinstance(empty.exception, AdapterError)
    assert str(empty.exception).startswith("The base model already answers")
    kinds = [line.split()[2] for line in kbot("adapters", "history").output.splitlines()]
    assert kinds == ["promote", "promote", "rollback", "rollback"]
