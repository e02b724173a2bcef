"""The nightly run with the real bundled model on CPU: promotion, the gate refusing a broken adapter,
a crash before promotion, skipping and the lock."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from agent.adapters import AdapterRegistry
from agent.answering import Answerer
from finetune.joblock import acquire, release
from finetune.nightly import LOCK, NightlyConfig, NightlyError, run_nightly
from finetune.train import TrainConfig
from finetune.votes import VoteLog
from kbot.db import Database
from kbot.db.models import Answer, TrainingRun
from kbot.settings import Settings
from knowledge.base import KnowledgeBase
from knowledge.embeddings import Embedder
from tests.test_training import FACTS, cite_pairs

pytestmark = pytest.mark.slow
FAST = TrainConfig(steps=4, max_length=192)


@pytest.fixture
async def answerer(tmp_path: Path, embedder: Embedder, base_model_dir: str) -> AsyncIterator[Answerer]:
    settings = Settings(data_dir=tmp_path / "data", base_model=base_model_dir, max_new_tokens=16)
    kb = await KnowledgeBase.open(settings, embedder=embedder)
    a = await Answerer.open(settings, kb=kb)
    yield a
    await a.close()
    await kb.close()


async def feedback_history(db: Database, *, flipped: bool = False, at: datetime | None = None) -> None:
    """People 👍 the answer that cites its source and 👎 the same answer without (or the reverse)."""
    votes = VoteLog(db)
    for i, row in enumerate(cite_pairs(FACTS)):
        for text, value in ((row["chosen"][0]["content"], 1), (row["rejected"][0]["content"], -1)):
            answer_id = str(uuid.uuid4())
            async with db.session() as s:
                s.add(
                    Answer(
                        id=answer_id,
                        platform="slack",
                        asker="U1",
                        channel="C1",
                        thread=answer_id,
                        collections=["hr"],
                        question=row["prompt"][-1]["content"],
                        search_query="q",
                        messages=row["prompt"],
                        retrieved=[{"chunk_id": f"c{i}", "score": 1.0, "source": "hr.md", "used": True}],
                        answer=text,
                        citations=[],
                        status="ok",
                        base_model="m",
                        latency_ms=1,
                        restricted=False,
                    )
                )
            await votes.vote(
                answer_id=answer_id,
                platform="slack",
                voter=f"U{i % 7}",
                value=-value if flipped else value,
                origin="button",
            )
    if at is not None:  # backdate, so a later run's --since leaves these out
        from sqlalchemy import update

        from kbot.db.models import Vote

        async with db.session() as s:
            await s.execute(update(Vote).values(updated_at=at))


def golden(path: Path) -> Path:
    """The trustworthy anchor: true preferences on topics of their own."""
    path.write_text("".join(json.dumps(r) + "\n" for r in cite_pairs(FACTS[12:])[:6]))
    return path


async def runs(db: Database) -> list[TrainingRun]:
    async with db.session() as s:
        return list((await s.scalars(select(TrainingRun).order_by(TrainingRun.id))).all())


async def test_promotes_a_better_adapter_then_refuses_a_broken_one(
    answerer: Answerer, tmp_path: Path
) -> None:
    db, settings = answerer.kb.db, answerer.settings
    registry = AdapterRegistry(db)
    await feedback_history(db, at=datetime.now(UTC) - timedelta(days=2))
    first = await run_nightly(
        settings, answerer, NightlyConfig(train=FAST, golden=golden(tmp_path / "g.jsonl"))
    )
    assert first.status == "promoted", first.decision
    active = await registry.active()
    assert active is not None and active.version == first.candidate
    assert (
        first.metrics["candidate"]["preference_accuracy"]
        > first.metrics["against"]["preference_accuracy"]
        == 0.5
    )
    assert first.counts["pairs"] == 48 and first.counts["held_out_pairs"] > 0 and first.seconds
    assert (settings.data_dir / "runs" / str(first.id) / "report.md").read_text().startswith("# Evaluation")

    # Tonight someone poisoned the feedback: every vote flipped. A fresh candidate learns it; the
    # gate compares it with the active adapter on the golden set, refuses it, keeps the active one.
    await feedback_history(db, flipped=True)
    second = await run_nightly(
        settings,
        answerer,
        NightlyConfig(
            train=FAST,
            golden=golden(tmp_path / "g.jsonl"),
            since=datetime.now(UTC) - timedelta(hours=1),
            from_active=False,
        ),
    )
    assert second.status == "kept", second.decision
    assert "preference_accuracy" in second.decision
    assert (await registry.active()).version == first.candidate  # type: ignore[union-attr]
    assert (
        second.metrics["candidate"]["preference_accuracy"] < second.metrics["against"]["preference_accuracy"]
    )
    assert [r.status for r in await runs(db)] == ["promoted", "kept"]


async def test_crash_before_promotion_keeps_the_previous_adapter(answerer: Answerer) -> None:
    db, settings = answerer.kb.db, answerer.settings
    await feedback_history(db)

    async def crash(version: str) -> None:
        raise RuntimeError(f"power cut before promoting {version}")

    with pytest.raises(NightlyError, match="power cut") as raised:
        await run_nightly(
            settings,
            answerer,
            NightlyConfig(train=TrainConfig(steps=1, max_length=128)),
            before_promote=crash,
        )
    assert isinstance(raised.value.__cause__, RuntimeError)  # the cause stays in the chain
    [run] = await runs(db)
    assert run.status == "failed" and "power cut" in run.error and run.finished_at is not None
    assert await AdapterRegistry(db).active() is None  # the base model still answers
    assert [a.version for a in await AdapterRegistry(db).list()] == [run.candidate]  # trained, not active
    assert not list((settings.data_dir / "adapters").glob(".nightly-run-*"))  # no training leftovers
    assert await acquire(db, LOCK, "next-run")  # the lock was released
    await release(db, LOCK, "next-run")


async def test_skips_with_too_little_feedback_and_never_overlaps(answerer: Answerer) -> None:
    db, settings = answerer.kb.db, answerer.settings
    skipped = await run_nightly(settings, answerer, NightlyConfig())
    assert skipped.status == "skipped" and "too little feedback: 0 pairs" in skipped.decision
    assert await acquire(db, LOCK, "a long run elsewhere")
    overlapped = await run_nightly(settings, answerer, NightlyConfig())
    assert overlapped.status == "skipped" and "in progress" in overlapped.decision
    await release(db, LOCK, "a long run elsewhere")
    assert [r.status for r in await runs(db)] == ["skipped", "skipped"]
    assert not await AdapterRegistry(db).list()


async def test_serve_schedules_the_nightly_run(answerer: Answerer) -> None:
    from bot.chat import ChatService
    from bot.ledger import ChatLedger
    from bot.server import Runtime, parse_time_of_day, schedule_nightly
    from bot.web.auth import AdminAuth
    from kbot.errors import ConfigError

    assert parse_time_of_day("02:30") == (2, 30)
    for wrong in ("25:00", "2pm", "02:60", ""):
        with pytest.raises(ConfigError, match="time of day like 02:00"):
            parse_time_of_day(wrong)
    service = ChatService(answerer.settings, answerer, ChatLedger(answerer.kb.db), VoteLog(answerer.kb.db))
    scheduler = schedule_nightly(
        Runtime(answerer.settings, service, None, None, AdminAuth(answerer.settings)), "02:30"
    )
    try:
        [job] = scheduler.get_jobs()
        fields = {f.name: str(f) for f in job.trigger.fields}
        assert (fields["hour"], fields["minute"]) == ("2", "30")
        assert job.max_instances == 1
    finally:
        scheduler.shutdown(wait=False)
