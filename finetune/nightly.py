"""The nightly learning run: export → train → evaluate → promote or keep, recorded in the SQL store.

1. Take the ``nightly`` lock in ``job_locks`` (a run still holding it makes this one skip), then
   mark runs left ``running`` by a process that stopped as failed and clean up their files.
2. Export DPO pairs (and corrections as SFT rows). Too few new pairs → ``skipped``.
3. Hold out a deterministic fifth of the pairs (by content hash) as preference rows for the gate.
4. If there are corrections, SFT on them first (continuing from the active adapter); then DPO on
   the remaining pairs, continuing from that (or the active adapter). The candidate is
   registered, inactive.
5. Evaluate the candidate against the active adapter (or the base model) on the golden file plus
   the held-out pairs; promote it only if the gate passes, else keep.
Every run leaves a ``training_runs`` row: inputs, counts, metrics, decision, duration — and the
error if it failed. Each stage logs a line (``-v``), and training logs every step.

A run may stop anywhere — killed, out of memory, a power cut — and the next run still works:

- The lock (:mod:`finetune.joblock`) has a short lease, renewed while the run goes on: a stopped
  holder blocks the next run for a few minutes at most, and not at all on the same host.
- Training writes under ``adapters/.nightly-run-<id>/``; only a finished adapter is renamed to
  ``adapters/<version>`` (after its name is recorded as the run's candidate) and registered.
- Promotion, the candidate's scores and the run's outcome are one transaction, which first renews
  the lease: a run that lost the lock cannot promote, and a half-done promotion cannot exist.
- Recovery (step 1): runs still ``running`` are marked ``failed`` with :data:`INTERRUPTED`; their
  staging folders go, and so does a candidate folder that was never registered. A registered
  candidate stays registered and inactive: never evaluated, never promoted (``kbot eval`` can
  still judge it).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from agent.adapters import AdapterInfo, AdapterRegistry
from agent.answering import Answerer
from finetune.evaluate import GateConfig, evaluate, read_golden
from finetune.export import ExportOptions, export_feedback
from finetune.joblock import Lease, LockLost, acquire, fence, holder_id, release
from finetune.train import TrainConfig, train_dpo, train_sft
from kbot.db import Database
from kbot.db.models import Adapter, TrainingRun, utcnow
from kbot.errors import KbotError
from kbot.settings import Settings

log = logging.getLogger(__name__)
LOCK = "nightly"
STAGING = ".nightly-run-"
INTERRUPTED = "interrupted (the process running it stopped)"


class NightlyError(KbotError):
    """A nightly run failed; the active adapter is unchanged."""


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
    holder = holder_id()
    started = time.perf_counter()
    run = TrainingRun(
        status="running",
        inputs={
            "since": str(config.since) if config.since else None,
            "golden": str(config.golden) if config.golden else None,
            "train": asdict(config.train),
        },
    )
    if not await acquire(db, LOCK, holder):
        run.status, run.decision = "skipped", "another nightly run is in progress"
        return await _save(db, run, started)
    try:
        async with db.session() as s:
            s.add(run)
        log.info("nightly run %s: started (lock holder %s)", run.id, holder)
        await _recover(db, settings, run.id)
        with Lease(db, LOCK, holder) as lease:
            return await _run(
                settings, answerer, config, run, holder, lease, started, embed, embed_model, before_promote
            )
    except BaseException as exc:
        # A boundary: whatever stopped the run (cancellation and Ctrl-C included), its record
        # must say so and its files must go; the caller still sees the error.
        run.status, run.decision, run.error = "failed", "", f"{type(exc).__name__}: {exc}"
        if not isinstance(exc, Exception):
            run.error = f"interrupted (the process was asked to stop: {type(exc).__name__})"
        log.error("nightly run %s failed: %s", run.id, run.error)
        await _clean(db, settings, run)
        await _save(db, run, started)
        if isinstance(exc, Exception) and not isinstance(exc, NightlyError | LockLost):
            raise NightlyError(
                f"Nightly run {run.id} failed ({run.error}); the active adapter is unchanged."
            ) from exc
        raise
    finally:
        shutil.rmtree(_staging(settings, run.id), ignore_errors=True)
        await release(db, LOCK, holder)


async def _run(
    settings: Settings,
    answerer: Answerer,
    config: NightlyConfig,
    run: TrainingRun,
    holder: str,
    lease: Lease,
    started: float,
    embed: Callable[[Any], Any] | None,
    embed_model: str,
    before_promote: BeforePromote | None,
) -> TrainingRun:
    db = answerer.kb.db
    options = ExportOptions(since=config.since, train_on_anonymous=settings.train_on_anonymous)
    exported = await export_feedback(db, options, embed=embed, embed_model=embed_model)
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
    log.info(
        "nightly run %s: exported %d pairs (%d to train on, %d held out), %d SFT rows",
        run.id, len(pairs), len(train_rows), len(held), len(corrections),
    )  # fmt: skip
    if len(pairs) < config.min_pairs or not train_rows:
        run.status = "skipped"
        run.decision = f"too little feedback: {len(pairs)} pairs (need {config.min_pairs})"
        log.info("nightly run %s: %s", run.id, run.decision)
        return await _save(db, run, started)
    await _progress(db, run, counts=run.counts)

    from agent.base_model import resolve_base_model

    active = await AdapterRegistry(db).active()
    base = await asyncio.to_thread(resolve_base_model, settings.base_model, settings.model_cache_dir)
    start = active if active and config.from_active else None
    candidate = await _train(settings, db, config, run, lease, base, start, corrections, train_rows)
    version = candidate.version

    against = active.version if active else "base"
    questions, golden_pairs = read_golden(config.golden) if config.golden else ([], [])
    lease.check()
    log.info("nightly run %s: evaluating %s against %s", run.id, version, against)
    report = await evaluate(
        answerer,
        (version, candidate.ref),
        (against, active.ref if active else None),
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
    if before_promote is not None:
        await before_promote(version)
    if report.passed:
        log.info("nightly run %s: %s passed the gate; promoting it", run.id, version)
        run.status, run.decision = "promoted", f"{version} beat {report.against}; now active"
    else:
        run.status, run.decision = "kept", f"{report.against} stays active: " + "; ".join(report.reasons)
    return await _decide(db, run, holder, started)


async def _train(
    settings: Settings,
    db: Database,
    config: NightlyConfig,
    run: TrainingRun,
    lease: Lease,
    base: str,
    start: AdapterInfo | None,
    corrections: list[dict[str, Any]],
    train_rows: list[dict[str, Any]],
) -> AdapterInfo:
    """SFT (if there are corrections), then DPO, from ``start`` (None: a new LoRA), in the run's
    staging folder; the finished adapter is registered, inactive."""
    staging = _staging(settings, run.id)
    start_from = start.path if start else None
    if corrections:
        lease.check()
        log.info("nightly run %s: SFT on %d rows", run.id, len(corrections))
        sft = await asyncio.to_thread(
            train_sft, corrections, base_model=base, out=staging / "sft", config=config.train,
            init_adapter=start_from,
        )  # fmt: skip
        start_from = sft.path
    lease.check()
    log.info("nightly run %s: DPO on %d pairs", run.id, len(train_rows))
    trained = await asyncio.to_thread(
        train_dpo, train_rows, base_model=base, out=staging / "dpo", config=config.train,
        init_adapter=start_from,
    )  # fmt: skip
    lease.check()
    version = f"dpo-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    path = settings.data_dir / "adapters" / version
    if path.exists():  # never ours to replace (or, on failure, to delete)
        raise NightlyError(f"{path} already exists; the candidate needs a name of its own.")
    run.candidate = version
    await _progress(db, run, candidate=version)  # first, so recovery knows the folder's name
    os.replace(trained.path, path)  # a complete adapter appears under its name, or nothing does
    registered = await AdapterRegistry(db).register(
        version,
        base_model=settings.base_model,
        path=path,
        training={
            "kind": "dpo",
            "nightly_run": run.id,
            "from": start.version if start else None,
            "sft_first": bool(corrections),
            "rows": len(train_rows),
            "steps": trained.steps,
            "final_loss": trained.losses[-1] if trained.losses else None,
            "losses": trained.losses,  # the dashboard's loss curve
        },
    )
    log.info("nightly run %s: registered candidate %s (inactive)", run.id, version)
    return registered


async def _decide(db: Database, run: TrainingRun, holder: str, started: float) -> TrainingRun:
    """Promotion (or not), the candidate's scores and the run's outcome: one transaction, fenced
    by the lease. The registry's ``activate`` does the same two UPDATEs, but in a transaction of
    its own."""
    run.finished_at = utcnow()
    run.seconds = round(time.perf_counter() - started, 2)
    async with db.session() as s:
        if not await fence(s, LOCK, holder):
            raise LockLost("The nightly run lost its lock before promoting; nothing was promoted.")
        values: dict[str, Any] = {"scores": run.metrics["candidate"]}
        if run.status == "promoted":
            await s.execute(update(Adapter).where(Adapter.active.is_(True)).values(active=False))
            values |= {"active": True, "activated_at": utcnow()}
        await s.execute(update(Adapter).where(Adapter.version == run.candidate).values(**values))
        merged = await s.merge(run)
    log.info("nightly run %s: %s — %s", run.id, run.status, run.decision)
    return merged


async def _progress(db: Database, run: TrainingRun, **values: Any) -> None:
    """Record what a run has done so far, unless another run already marked it failed."""
    async with db.session() as s:
        await s.execute(
            update(TrainingRun)
            .where(TrainingRun.id == run.id, TrainingRun.status == "running")
            .values(**values)
        )


def _staging(settings: Settings, run_id: int | None) -> Path:
    return settings.data_dir / "adapters" / f"{STAGING}{run_id}"


async def _recover(db: Database, settings: Settings, me: int) -> None:
    """Mark runs left ``running`` failed and delete what they left. We hold the lock, so none of
    them can still promote: a run without the lock has stopped, or is fenced off if it has not."""
    async with db.session() as s:
        stale = list(
            await s.scalars(select(TrainingRun).where(TrainingRun.status == "running", TrainingRun.id != me))
        )
        registered = await _registered(s, stale)
        for r in stale:
            kept = (
                f"; its candidate {r.candidate} stays registered, inactive"
                if r.candidate in registered
                else ""
            )
            r.status, r.finished_at = "failed", utcnow()
            r.error = f"{INTERRUPTED}; noticed by run {me}{kept}"
    _remove_files(settings, stale, registered)
    for r in stale:
        log.warning("nightly run %s: run %s was left running; marked failed: %s", me, r.id, r.error)
    adapters = settings.data_dir / "adapters"
    for leftover in adapters.glob(f"{STAGING}*") if adapters.is_dir() else []:
        if leftover.name != f"{STAGING}{me}":  # a run killed before it wrote its own row
            shutil.rmtree(leftover, ignore_errors=True)


async def _registered(s: AsyncSession, runs: list[TrainingRun]) -> set[str]:
    names = [r.candidate for r in runs if r.candidate]
    return set(await s.scalars(select(Adapter.version).where(Adapter.version.in_(names)))) if names else set()


def _remove_files(settings: Settings, runs: list[TrainingRun], registered: set[str]) -> None:
    """The staging folders of ``runs``, and their candidates' folders unless registered."""
    for r in runs:
        shutil.rmtree(_staging(settings, r.id), ignore_errors=True)
        if r.candidate and r.candidate not in registered:
            shutil.rmtree(settings.data_dir / "adapters" / r.candidate, ignore_errors=True)


async def _clean(db: Database, settings: Settings, run: TrainingRun) -> None:
    async with db.session() as s:
        registered = await _registered(s, [run])
    _remove_files(settings, [run], registered)


async def _save(db: Database, run: TrainingRun, started: float) -> TrainingRun:
    run.finished_at = utcnow()
    run.seconds = round(time.perf_counter() - started, 2)
    async with db.session() as s:
        run = await s.merge(run)
    return run
