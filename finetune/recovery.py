"""Cleaning up after nightly runs that stopped midway (killed, out of memory, a power cut).

Runs still ``running`` when a new run holds the lock are marked ``failed`` with
:data:`INTERRUPTED`; their staging folders go, and so does a candidate folder that was never
registered. A registered candidate stays registered and inactive.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from kbot.db import Database
from kbot.db.models import Adapter, TrainingRun, utcnow
from kbot.settings import Settings

log = logging.getLogger("finetune.nightly")
STAGING = ".nightly-run-"
INTERRUPTED = "interrupted (the process running it stopped)"


def staging_dir(settings: Settings, run_id: int | None) -> Path:
    return settings.data_dir / "adapters" / f"{STAGING}{run_id}"


async def recover(db: Database, settings: Settings, me: int) -> None:
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
        shutil.rmtree(staging_dir(settings, r.id), ignore_errors=True)
        if r.candidate and r.candidate not in registered:
            shutil.rmtree(settings.data_dir / "adapters" / r.candidate, ignore_errors=True)


async def clean(db: Database, settings: Settings, run: TrainingRun) -> None:
    async with db.session() as s:
        registered = await _registered(s, [run])
    _remove_files(settings, [run], registered)
