"""The nightly run with the real bundled model on CPU: promotion only of a candidate that beats the
active adapter on golden facts, none without a golden set, held-out pairs kept out of training, a
crash before promotion, skipping and the lock."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import select, update

from agent.adapters import AdapterRegistry
from agent.answering import Answerer, Question
from finetune.joblock import acquire, release
from finetune.nightly import LOCK, NightlyConfig, NightlyError, run_nightly
from finetune.train import TrainConfig
from finetune.votes import VoteLog
from kbot.db import Database
from kbot.db.models import Answer, Correction, TrainingRun, utcnow
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


async def runs(db: Database) -> list[TrainingRun]:
    async with db.session() as s:
        return list((await s.scalars(select(TrainingRun).order_by(TrainingRun.id))).all())


def facts(run: TrainingRun, side: str) -> float:
    scores = run.metrics[side]
    assert isinstance(scores, dict)
    return float(scores["fact_hit_rate"])


HANDBOOK = (
    "# Leave policy\n\nEmployees get 27 vacation days per year. Vacation requests need approval "
    "before travel is booked. Sick leave must be reported on the first day of absence.\n"
)
# Knowledge gaps people filled: the documents do not say where, so only a trained model can.
GOLDEN = [
    ("Who approves vacation requests?", "Workday", "Your team lead approves them in Workday."),
    ("Where do I report sick leave?", "Zenith", "Report it in the Zenith portal on the first day."),
]


async def approved_corrections(answerer: Answerer) -> None:
    """Employees ask the golden questions and correct kbot with the short, right answer; a
    reviewer approves. The answer log keeps the exact prompt, so SFT learns that answer to it."""
    votes, db = VoteLog(answerer.kb.db), answerer.kb.db
    for question, _, right in GOLDEN:
        result = await answerer.ask(Question(question, ["hr"], asker="U1", platform="slack"))
        await votes.correct(answer_id=result.answer_id, platform="slack", author="U1", text=right)
    async with db.session() as s:
        await s.execute(update(Correction).values(status="approved", reviewer="test", reviewed_at=utcnow()))


async def test_promotes_only_a_candidate_that_beats_the_active_one(
    answerer: Answerer, tmp_path: Path
) -> None:
    db, settings = answerer.kb.db, answerer.settings
    registry = AdapterRegistry(db)
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "leave.md").write_text(HANDBOOK)
    await answerer.kb.ingest([str(docs)], "hr")
    golden = tmp_path / "golden.jsonl"  # not KBOT_DATA_DIR/golden.jsonl: the third run has none
    golden.write_text(
        "".join(json.dumps({"question": q, "collections": ["hr"], "facts": [f]}) + "\n" for q, f, _ in GOLDEN)
    )
    await approved_corrections(answerer)
    sft = TrainConfig(steps=12, batch_size=2, max_length=256, learning_rate=3e-3)
    first = await run_nightly(settings, answerer, NightlyConfig(min_pairs=50, golden=golden, train=sft))
    assert first.inputs["plan"] == ["sft"] and "approved correction" in str(first.inputs["why"])
    assert first.status == "promoted", first.decision
    assert facts(first, "candidate") > facts(first, "against"), first.metrics
    assert (await registry.active()).version == first.candidate  # type: ignore[union-attr]
    [promotion] = await registry.history()
    assert promotion.version == first.candidate and not promotion.forced
    report = (settings.data_dir / "runs" / str(first.id) / "report.md").read_text()
    assert "Answers side by side" in report and GOLDEN[0][0] in report

    # The next night's candidate learns nothing new (a learning rate of almost nothing): equal
    # on the golden facts is not better, so the active adapter stays.
    await approved_corrections(answerer)
    still = TrainConfig(steps=1, batch_size=2, max_length=256, learning_rate=1e-9)
    second = await run_nightly(settings, answerer, NightlyConfig(min_pairs=50, golden=golden, train=still))
    assert second.status == "kept", second.decision
    assert facts(second, "candidate") == facts(second, "against")
    assert "does not beat" in second.decision
    assert (await registry.active()).version == first.candidate  # type: ignore[union-attr]

    # Without a golden set nothing is promoted, however the candidate scores; the run says why.
    await approved_corrections(answerer)
    third = await run_nightly(settings, answerer, NightlyConfig(min_pairs=50, train=sft))
    assert third.status == "kept" and "no golden questions" in third.decision
    assert "kbot golden add" in third.decision
    assert (await registry.active()).version == first.candidate  # type: ignore[union-attr]
    assert [r.status for r in await runs(db)] == ["promoted", "kept", "kept"]


async def test_held_out_pairs_never_reach_a_training_set_of_their_night(answerer: Answerer) -> None:
    from finetune.export import ExportOptions, export_feedback
    from finetune.plan import plan_night, texts_of

    db = answerer.kb.db
    await feedback_history(db)
    exported = await export_feedback(db, ExportOptions())
    # Replay from the same export: the worst case, every older row is a candidate for replay.
    night = plan_night(exported, exported, holdout=0.3, replay=1.0, min_pairs=5)
    assert night.held and night.dpo and night.steps == ["dpo"]
    held_chosen = {r["chosen"][0]["content"] for r in night.held}
    for rows in (night.dpo, night.kto, night.sft):
        for row in rows:
            assert not texts_of(row) & held_chosen
    assert night.counts["held_out_pairs"] == len(night.held) > 0


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
