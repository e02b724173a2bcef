"""Sources kbot keeps in sync by itself: ``[sources]`` in the settings, re-ingested on a schedule.

Each sync is ``kbot ingest PATH -c COLLECTION --acl …`` run by the server: incremental (unchanged
files are skipped by hash), so a sync every few minutes costs a walk and a hash per file. A sync
that fails keeps the previous content (ingest never deletes what it could not replace) and is
recorded as ``failed`` in ``source_syncs``, which the dashboard and ``kbot doctor`` show. A source
whose folder is gone, or that was removed from the settings, is *purged* only when asked:
``kbot sources sync --prune`` (after a confirmation) or ``kbot serve --prune``.

Replicas (PostgreSQL + a Qdrant server) take a ``job_locks`` row per source, so one syncs it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select

from finetune import joblock
from kbot.db.models import SourceSync, utcnow
from kbot.errors import KbotError
from kbot.policies import SourceConfig
from knowledge.base import KnowledgeBase

log = logging.getLogger(__name__)
DETAIL_MAX = 2000


@dataclass(frozen=True)
class Stale:
    """A synced source that should go: its folder is gone, or it left the settings."""

    name: str
    path: str
    collection: str
    why: str


class SourceSyncer:
    def __init__(self, kb: KnowledgeBase, sources: dict[str, SourceConfig], *, prune: bool = False) -> None:
        self._kb = kb
        self._sources = sources
        self._db = kb.db
        self._prune = prune

    async def sync(self, name: str) -> SourceSync | None:
        """Sync source ``name`` now; None when another replica is syncing it."""
        source = self._sources[name]
        holder = joblock.holder_id()
        lock = f"source:{name}"
        if not await joblock.acquire(self._db, lock, holder):
            log.info("source %s is being synced elsewhere; skipped", name)
            return None
        try:
            return await self._sync(name, source)
        finally:
            await joblock.release(self._db, lock, holder)

    async def _sync(self, name: str, source: SourceConfig) -> SourceSync:
        path = str(source.path)
        started = utcnow()
        await self._record(name, source, status="running", started_at=started, finished_at=None)
        status, detail = "ok", ""
        if not source.path.exists() and self._prune:
            gone = await self.purge(Stale(name, path, source.collection, f"{path} is gone"))
            detail = f"{path} is gone: {len(gone)} documents purged"
        elif not source.path.exists():
            status, detail = "failed", f"{path} is gone; its documents stay until `kbot sources sync --prune`"
        else:
            try:
                report = await self._kb.ingest(
                    [path], source.collection, source.acl, follow_symlinks=source.follow_symlinks
                )
            except KbotError as exc:
                status, detail = "failed", str(exc)
            else:
                detail = (
                    f"{len(report.added)} added, {len(report.updated)} updated, "
                    f"{len(report.unchanged)} unchanged, {len(report.deleted)} deleted, "
                    f"{len(report.failed)} failed"
                )
                if report.failed:
                    status = "failed"
                    detail += ": " + "; ".join(f"{src}: {why}" for src, why in report.failed[:5])
        if status == "failed":
            log.warning("source %s did not sync: %s", name, detail)
        else:
            log.info("source %s synced: %s", name, detail)
        fields: dict[str, Any] = {"status": status, "finished_at": utcnow(), "detail": detail[:DETAIL_MAX]}
        if status == "ok":
            fields["last_ok_at"] = fields["finished_at"]
        return await self._record(name, source, started_at=started, **fields)

    async def _record(self, name: str, source: SourceConfig, **fields: Any) -> SourceSync:
        async with self._db.session() as s:
            row = await s.get(SourceSync, name)
            if row is None:
                row = SourceSync(name=name, detail="", **fields)
                s.add(row)
            for key, value in fields.items():
                setattr(row, key, value)
            row.path, row.collection = str(source.path), source.collection
            await s.flush()
            s.expunge(row)
        return row

    async def status(self) -> list[SourceSync]:
        async with self._db.session() as s:
            rows = list((await s.scalars(select(SourceSync).order_by(SourceSync.name))).all())
            s.expunge_all()
        return rows

    async def stale(self) -> list[Stale]:
        """Sources synced before that should go now."""
        found = []
        for row in await self.status():
            source = self._sources.get(row.name)
            if source is None:
                found.append(Stale(row.name, row.path, row.collection, "removed from the settings"))
            elif not Path(source.path).exists():
                found.append(Stale(row.name, row.path, row.collection, f"{row.path} is gone"))
            elif (str(source.path), source.collection) != (row.path, row.collection):
                found.append(Stale(row.name, row.path, row.collection, "moved to another path or collection"))
        return found

    async def purge(self, stale: Stale) -> list[str]:
        """Delete what ``stale`` ingested; the documents that went."""
        gone: list[str] = []
        if stale.collection in await self._kb.catalog.collection_names():
            gone = (await self._kb.delete([stale.path], stale.collection))[stale.path]
        async with self._db.session() as s:
            if stale.name not in self._sources:
                await s.execute(delete(SourceSync).where(SourceSync.name == stale.name))
        log.warning("source %s purged (%s): %d documents deleted", stale.name, stale.why, len(gone))
        return gone


def first_run(source: SourceConfig, last_started: datetime | None, now: datetime) -> datetime | None:
    """When a source's first sync after start-up is due: at once for an interval, for a source
    never synced, and for a cron source whose run was missed while kbot was down; None to wait
    for the cron spec's next time."""
    from apscheduler.triggers.cron import CronTrigger

    if source.cron is None or last_started is None:
        return now
    if last_started.tzinfo is None:  # SQLite gives back the UTC it was given, without the zone
        last_started = last_started.replace(tzinfo=UTC)
    missed = CronTrigger.from_crontab(source.cron, timezone=now.tzinfo).get_next_fire_time(None, last_started)
    return now if missed is not None and missed <= now else None


def schedule(
    scheduler: Any, syncer: SourceSyncer, sources: dict[str, SourceConfig], last: dict[str, datetime]
) -> None:
    """One job per source: every N seconds or on its cron spec, the first when :func:`first_run`
    says (``last``: when each source's last sync started)."""
    from apscheduler.triggers.cron import CronTrigger
    from apscheduler.triggers.interval import IntervalTrigger

    now = datetime.now().astimezone()
    for name, source in sources.items():

        async def job(name: str = name) -> None:
            try:
                await syncer.sync(name)
            except KbotError as exc:  # the SQL store is down: the next run tries again
                log.error("source %s: sync could not run: %s", name, exc)

        every = source.interval_s
        trigger = CronTrigger.from_crontab(source.cron) if every is None else IntervalTrigger(seconds=every)
        first = first_run(source, last.get(name), now)
        kwargs: dict[str, Any] = {"next_run_time": first} if first is not None else {}
        scheduler.add_job(job, trigger, max_instances=1, coalesce=True, id=f"source:{name}", **kwargs)


async def start(kb: KnowledgeBase, sources: dict[str, SourceConfig], *, prune: bool) -> Any:
    """At server start: purge (``prune``) or name the stale sources, then schedule the rest."""
    from apscheduler.schedulers.asyncio import AsyncIOScheduler

    syncer = SourceSyncer(kb, sources, prune=prune)
    for stale in await syncer.stale():
        if prune:
            await syncer.purge(stale)
        else:
            log.warning(
                "source %s (%s, collection %s): %s; its documents are kept until kbot serve --prune "
                "or kbot sources sync --prune",
                stale.name,
                stale.path,
                stale.collection,
                stale.why,
            )
    if not sources:
        return None
    scheduler = AsyncIOScheduler()
    schedule(scheduler, syncer, sources, {row.name: row.started_at for row in await syncer.status()})
    scheduler.start()
    log.info("keeping %d sources in sync: %s", len(sources), ", ".join(sources))
    return scheduler
