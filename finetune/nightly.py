"""The nightly learning run: export → train → evaluate → promote or keep, recorded in the SQL store.

1. Take the ``nightly`` lock in ``job_locks`` (a run still holding it makes this one skip), then
   mark runs left ``running`` by a process that stopped as failed and clean up their files.
2. Export the feedback new since the last promoted run, and a replay sample of older rows; hold
   out a share of the new pairs by question for the gate (:mod:`finetune.plan`).
3. Choose the trainers by what the night holds — SFT on approved corrections first, then DPO on
   pairs or KTO on unpaired votes — and record why; too little of everything → ``skipped``.
4. Train from the active adapter (or a new LoRA); the candidate is registered, inactive.
5. Evaluate it against the active adapter (or the base model) on the golden set
   (``--golden``, else ``KBOT_DATA_DIR/golden.jsonl``) plus the held-out pairs; promote it only
   if it beats the active one on the golden facts and regresses nowhere
   (:mod:`finetune.evaluate`). Without golden questions nothing is promoted: the run trains,
   reports, and says what is missing.
Every run leaves a ``training_runs`` row: inputs and plan, counts, metrics, decision, duration —
and the error if it failed. Each stage logs a line (``-v``), and training logs every step.

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
import logging
import os
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select, update

from agent.adapters import AdapterInfo, AdapterRegistry, promote_in
from agent.answering import Answerer
from finetune.evaluate import GateConfig, Report, evaluate, read_golden
from finetune.export import ExportOptions, export_feedback
from finetune.joblock import Lease, LockLost, acquire, fence, holder_id, release
from finetune.plan import Night, plan_night
from finetune.recovery import clean, recover, staging_dir
from finetune.train import TrainConfig, TrainResult, train_dpo, train_kto, train_sft
from kbot.db import Database
from kbot.db.models import Adapter, TrainingRun, utcnow
from kbot.errors import KbotError
from kbot.settings import Settings

log = logging.getLogger(__name__)
LOCK = "nightly"


class NightlyError(KbotError):
    """A nightly run failed; the active adapter is unchanged."""


@dataclass
class NightlyConfig:
    min_pairs: int = field(
        default=20,
        metadata={"help": "New pairs for DPO (or unpaired votes for KTO) below which the run skips."},
    )
    holdout: float = field(
        default=0.2, metadata={"help": "Share of the new pairs' questions kept out of training for the gate."}
    )
    replay: float = field(
        default=0.5, metadata={"help": "Older rows replayed, as a share of the new rows of each kind."}
    )
    golden: Path | None = field(
        default=None,
        metadata={"help": "Golden JSONL (questions with facts, pairs); default KBOT_DATA_DIR/golden.jsonl."},
    )
    since: datetime | None = field(
        default=None, metadata={"help": "Only feedback since then (default: since the last promoted run)."}
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
        if self.replay < 0:
            raise ValueError("replay must not be negative")
        if self.min_pairs < 2:
            raise ValueError("min_pairs must be at least 2")


# A hook the tests use to inject a crash between training and promotion.
BeforePromote = Callable[[str], Awaitable[None]]


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
        await recover(db, settings, run.id)
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
        await clean(db, settings, run)
        await _save(db, run, started)
        if isinstance(exc, Exception) and not isinstance(exc, NightlyError | LockLost):
            raise NightlyError(
                f"Nightly run {run.id} failed ({run.error}); the active adapter is unchanged."
            ) from exc
        raise
    finally:
        shutil.rmtree(staging_dir(settings, run.id), ignore_errors=True)
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
    since = config.since or await _last_promotion(db)
    golden = config.golden or _default_golden(settings)
    run.inputs |= {"since": str(since) if since else None, "golden": str(golden) if golden else None}
    options = ExportOptions(
        since=since, train_on_anonymous=settings.train_on_anonymous, system_prompt=settings.system_prompt
    )
    exported = await export_feedback(db, options, embed=embed, embed_model=embed_model)
    everything = None
    if since is not None and config.replay > 0:
        options = replace(options, since=None)
        everything = await export_feedback(db, options, embed=embed, embed_model=embed_model)
    night = plan_night(
        exported,
        everything,
        holdout=config.holdout,
        replay=config.replay,
        min_pairs=config.min_pairs,
        seed=config.train.seed,
        quarantined=await _quarantined(db),
    )
    run.inputs |= {"plan": night.steps, "why": night.why}
    run.counts = {
        "pairs": len(exported.dpo),
        "train_pairs": len(night.dpo),
        "kto_rows": len(night.kto),
        "sft_rows": len(night.sft) if "sft" in night.steps else 0,
        **night.counts,
        "made": dict(exported.made),
        "dropped": dict(exported.dropped),
    }
    log.info(
        "nightly run %s: exported %d pairs, %d unpaired votes, %d SFT rows (%d pairs held out); %s",
        run.id, len(exported.dpo), len(exported.kto), len(exported.sft), len(night.held), night.why,
    )  # fmt: skip
    if not night.steps:
        run.status, run.decision = "skipped", night.why
        return await _save(db, run, started)
    await _progress(db, run, counts=run.counts, inputs=run.inputs)

    from agent.base_model import resolve_base_model

    active = await AdapterRegistry(db).active()
    base = await asyncio.to_thread(resolve_base_model, settings.base_model, settings.model_cache_dir)
    start = active if active and config.from_active else None
    candidate = await _train(settings, db, config, run, lease, base, start, night)
    version = candidate.version

    against = active.version if active else "base"
    questions, golden_pairs = read_golden(golden) if golden else ([], [])
    lease.check()
    log.info("nightly run %s: evaluating %s against %s", run.id, version, against)
    report = await evaluate(
        answerer,
        (version, candidate.ref),
        (against, active.ref if active else None),
        questions,
        golden_pairs,
        base_model=base,
        heldout=night.held,
        config=config.gate,
    )
    log.info(
        "nightly run %s: evaluated %s: %s", run.id, version,
        "it beats " + against if report.passed else "; ".join(report.reasons),
    )  # fmt: skip
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
        if report.harmful:  # what made it worse must not come back with the next night's feedback
            run.inputs = {**run.inputs, "quarantine": night.new_keys}
            run.decision += f"; its {len(night.new_keys)} new rows are quarantined"
    return await _decide(db, run, holder, started, report)


def _default_golden(settings: Settings) -> Path | None:
    path = settings.data_dir / "golden.jsonl"
    return path if path.is_file() else None


async def _quarantined(db: Database) -> frozenset[str]:
    """The rows of nights refused for making things worse (finetune.plan): never trained on."""
    async with db.session() as s:
        inputs = await s.scalars(select(TrainingRun.inputs).where(TrainingRun.status == "kept"))
        keys: set[str] = set()
        for recorded in inputs:
            found = (recorded or {}).get("quarantine")
            if isinstance(found, list):
                keys.update(str(k) for k in found)
        return frozenset(keys)


async def _last_promotion(db: Database) -> datetime | None:
    """When the last promoted run started: its feedback is in the active adapter."""
    async with db.session() as s:
        return await s.scalar(
            select(TrainingRun.started_at)
            .where(TrainingRun.status == "promoted")
            .order_by(TrainingRun.started_at.desc())
            .limit(1)
        )


_TRAINERS: dict[str, Callable[..., TrainResult]] = {"sft": train_sft, "dpo": train_dpo, "kto": train_kto}


async def _train(
    settings: Settings,
    db: Database,
    config: NightlyConfig,
    run: TrainingRun,
    lease: Lease,
    base: str,
    start: AdapterInfo | None,
    night: Night,
) -> AdapterInfo:
    """The night's trainers in order, each continuing from the last (the first from ``start``;
    None: a new LoRA), in the run's staging folder; the finished adapter is registered, inactive."""
    staging = staging_dir(settings, run.id)
    start_from = start.path if start else None
    trained: TrainResult | None = None
    for step in night.steps:
        rows = {"sft": night.sft, "dpo": night.dpo, "kto": night.kto}[step]
        lease.check()
        log.info("nightly run %s: %s on %d rows", run.id, step.upper(), len(rows))
        trained = await asyncio.to_thread(
            _TRAINERS[step], rows, base_model=base, out=staging / step, config=config.train,
            init_adapter=start_from,
        )  # fmt: skip
        start_from = trained.path
    assert trained is not None  # the plan has at least one step
    lease.check()
    version = f"{night.steps[-1]}-{datetime.now(UTC):%Y%m%d-%H%M%S}"
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
            "kind": "+".join(night.steps),
            "nightly_run": run.id,
            "from": start.version if start else None,
            "why": night.why,
            "rows": {step: len(getattr(night, step)) for step in night.steps},
            "steps": trained.steps,
            "seconds": round(trained.seconds, 1),
            "final_loss": trained.losses[-1] if trained.losses else None,
            "losses": trained.losses,  # the dashboard's loss curve
        },
    )
    log.info("nightly run %s: registered candidate %s (inactive)", run.id, version)
    return registered


async def _decide(db: Database, run: TrainingRun, holder: str, started: float, report: Report) -> TrainingRun:
    """Promotion (or not), the candidate's scores and the gate's verdict, and the run's outcome:
    one transaction, fenced by the lease."""
    run.finished_at = utcnow()
    run.seconds = round(time.perf_counter() - started, 2)
    verdict = {
        "passed": report.passed,
        "against": report.against,
        "reasons": report.reasons,
        "at": run.finished_at.isoformat(),
        "by": f"nightly run {run.id}",
    }
    async with db.session() as s:
        if not await fence(s, LOCK, holder):
            raise LockLost("The nightly run lost its lock before promoting; nothing was promoted.")
        scores = {k: v for k, v in asdict(report.metrics["candidate"]).items() if k != "answers"}
        scores["gate"] = verdict
        await s.execute(update(Adapter).where(Adapter.version == run.candidate).values(scores=scores))
        if run.status == "promoted":
            active = await s.scalar(select(Adapter.version).where(Adapter.active.is_(True)))
            if (active or "base") == report.against:
                await promote_in(s, run.candidate, by=f"nightly run {run.id}", evaluation=verdict)
            else:  # someone promoted or rolled back meanwhile: the verdict is about another one
                run.status = "kept"
                run.decision = (
                    f"not promoted: {active or 'base'} became active while {report.against} was judged"
                )
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


async def _save(db: Database, run: TrainingRun, started: float) -> TrainingRun:
    run.finished_at = utcnow()
    run.seconds = round(time.perf_counter() - started, 2)
    async with db.session() as s:
        run = await s.merge(run)
    return run
