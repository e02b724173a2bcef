"""The nightly learning run: export → train → evaluate → promote or keep, recorded in the SQL store.

1. Take the ``nightly`` lock in ``job_locks`` (a run still holding it makes this one skip; a lock
   past its expiry — a crashed run — is taken over).
2. Export DPO pairs (and corrections as SFT rows). Too few new pairs → ``skipped``.
3. Hold out a deterministic fifth of the pairs (by content hash) as preference rows for the gate.
4. If there are corrections, SFT on them first (continuing from the active adapter); then DPO on
   the remaining pairs, continuing from that (or the active adapter). The candidate is
   registered, inactive.
5. Evaluate the candidate against the active adapter (or the base model) on the golden file plus
   the held-out pairs; promote it (one transaction) only if the gate passes, else keep.
Every run leaves a ``training_runs`` row: inputs, counts, metrics, decision, duration — and the
error if it failed. A crash at any point leaves the previous adapter active: promotion is the
last step and a single UPDATE.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import delete, update

from agent.adapters import AdapterRegistry
from agent.answering import Answerer
from finetune.evaluate import GateConfig, evaluate, read_golden
from finetune.export import ExportOptions, export_feedback
from finetune.train import TrainConfig, train_dpo, train_sft
from kbot.db import Database
from kbot.db.models import Adapter, JobLock, TrainingRun, utcnow
from kbot.settings import Settings

log = logging.getLogger(__name__)
LOCK = "nightly"
LOCK_TTL = timedelta(hours=12)


@dataclass
class NightlyConfig:
    min_pairs: int = field(
        default=20, metadata={"help": "Fewer new preference pairs than this: skip the run."}
    )
    holdout: float = field(
        default=0.2, metadata={"help": "Share of pairs kept out of training for the gate."}
    )
    golden: Path | None = field(
        default=None, metadata={"help": "Golden JSONL (questions with facts, pairs)."}
    )
    since: datetime | None = field(
        default=None, metadata={"help": "Only feedback since then (default: all)."}
    )
    from_active: bool = field(
        default=True,
        metadata={"help": "Continue from the active adapter; False: a fresh LoRA on the base model."},
    )
    train: TrainConfig = field(default_factory=TrainConfig)
    gate: GateConfig = field(default_factory=GateConfig)

    def __post_init__(self) -> None:
        if not 0 < self.holdout < 1:
            raise ValueError("holdout must be between 0 and 1")
        if self.min_pairs < 2:
            raise ValueError("min_pairs must be at least 2")


# A hook the tests use to inject a crash between training and promotion.
BeforePromote = Callable[[str], Awaitable[None]]


async def acquire(db: Database, holder: str) -> bool:
    now = utcnow()
    async with db.session() as s:
        await s.execute(delete(JobLock).where(JobLock.name == LOCK, JobLock.expires_at < now))
        stmt = (
            db.insert(JobLock)
            .values(name=LOCK, holder=holder, expires_at=now + LOCK_TTL)
            .on_conflict_do_nothing(index_elements=["name"])
            .returning(JobLock.name)
        )
        return (await s.execute(stmt)).first() is not None


async def release(db: Database, holder: str) -> None:
    async with db.session() as s:
        await s.execute(delete(JobLock).where(JobLock.name == LOCK, JobLock.holder == holder))


def _held_out(row: dict[str, Any], share: float) -> bool:
    digest = hashlib.sha256(json.dumps(row, sort_keys=True, ensure_ascii=False).encode()).digest()
    return digest[0] < share * 256


async def run_nightly(
    settings: Settings,
    answerer: Answerer,
    config: NightlyConfig,
    *,
    embed: Callable[[Any], Any] | None = None,
    embed_model: str = "",
    before_promote: BeforePromote | None = None,
) -> TrainingRun:
    db = answerer.kb.db
    holder = f"{socket.gethostname()}:{os.getpid()}:{time.time_ns()}"
    started = time.perf_counter()
    run = TrainingRun(
        status="running",
        inputs={
            "since": str(config.since) if config.since else None,
            "golden": str(config.golden) if config.golden else None,
            "train": asdict(config.train),
        },
    )
    if not await acquire(db, holder):
        run.status, run.decision = "skipped", "another nightly run is in progress"
        return await _save(db, run, started)
    async with db.session() as s:
        s.add(run)
    try:
        await _run(settings, answerer, config, run, embed, embed_model, before_promote)
    except Exception as exc:
        # The run record must say what happened, whatever it was; the caller still sees the error.
        run.status, run.error = "failed", f"{type(exc).__name__}: {exc}"
        log.error("nightly run %s failed: %s", run.id, run.error)
        await _save(db, run, started)
        raise
    finally:
        await release(db, holder)
    return await _save(db, run, started)


async def _run(
    settings: Settings,
    answerer: Answerer,
    config: NightlyConfig,
    run: TrainingRun,
    embed: Callable[[Any], Any] | None,
    embed_model: str,
    before_promote: BeforePromote | None,
) -> None:
    db = answerer.kb.db
    exported = await export_feedback(
        db, ExportOptions(since=config.since), embed=embed, embed_model=embed_model
    )
    pairs = list(exported.dpo)
    # SFT only when people wrote corrections; it then also includes the well-rated answers.
    corrections = list(exported.sft) if exported.made["correction"] else []
    held = [r for r in pairs if _held_out(r, config.holdout)]
    train_rows = [r for r in pairs if not _held_out(r, config.holdout)]
    run.counts = {
        "pairs": len(pairs),
        "train_pairs": len(train_rows),
        "held_out_pairs": len(held),
        "sft_rows": len(corrections),
        "made": dict(exported.made),
        "dropped": dict(exported.dropped),
    }
    if len(pairs) < config.min_pairs or not train_rows:
        run.status = "skipped"
        run.decision = f"too little feedback: {len(pairs)} pairs (need {config.min_pairs})"
        log.info("nightly: %s", run.decision)
        return

    from agent.base_model import resolve_base_model

    registry = AdapterRegistry(db)
    active = await registry.active()
    base = await asyncio.to_thread(resolve_base_model, settings.base_model, settings.model_cache_dir)
    stamp = f"{datetime.now(UTC):%Y%m%d-%H%M%S}"
    start_from = active.path if active and config.from_active else None
    if corrections:
        sft = await asyncio.to_thread(
            train_sft,
            corrections,
            base_model=base,
            out=settings.data_dir / "adapters" / f"sft-{stamp}",
            config=config.train,
            init_adapter=start_from,
        )
        start_from = sft.path
    version = f"dpo-{stamp}"
    trained = await asyncio.to_thread(
        train_dpo,
        train_rows,
        base_model=base,
        out=settings.data_dir / "adapters" / version,
        config=config.train,
        init_adapter=start_from,
    )
    candidate = await registry.register(
        version,
        base_model=settings.base_model,
        path=trained.path,
        training={
            "kind": "dpo",
            "nightly_run": run.id,
            "from": active.version if active and config.from_active else None,
            "sft_first": bool(corrections),
            "rows": len(train_rows),
            "steps": trained.steps,
            "final_loss": trained.losses[-1] if trained.losses else None,
            "losses": trained.losses,  # the dashboard's loss curve
        },
    )
    run.candidate = version

    questions, golden_pairs = read_golden(config.golden) if config.golden else ([], [])
    report = await evaluate(
        answerer,
        (version, candidate.ref),
        (active.version if active else "base", active.ref if active else None),
        questions,
        golden_pairs,
        base_model=base,
        heldout=held,
        config=config.gate,
    )
    out = settings.data_dir / "runs" / str(run.id)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(report.to_json(), encoding="utf-8")
    (out / "report.md").write_text(report.to_markdown(), encoding="utf-8")
    run.metrics = {
        name: {k: v for k, v in asdict(m).items() if k != "answers"} for name, m in report.metrics.items()
    }
    async with db.session() as s:
        await s.execute(
            update(Adapter).where(Adapter.version == version).values(scores=run.metrics["candidate"])
        )

    if before_promote is not None:
        await before_promote(version)
    if report.passed:
        await registry.activate(version)
        run.status, run.decision = "promoted", f"{version} beat {report.against}; now active"
    else:
        run.status, run.decision = "kept", f"{report.against} stays active: " + "; ".join(report.reasons)
    log.info("nightly: %s", run.decision)


async def _save(db: Database, run: TrainingRun, started: float) -> TrainingRun:
    run.finished_at = utcnow()
    run.seconds = round(time.perf_counter() - started, 2)
    async with db.session() as s:
        run = await s.merge(run)
    return run
