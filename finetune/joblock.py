"""Job locks: one process at a time runs a job (the nightly learning run), across hosts and replicas.

A lock is a ``job_locks`` row: ``name``, ``holder``, ``expires_at``. The holder id is
``host:pid:scope:token``, where ``scope`` names the pid namespace (host name, boot id, pid
namespace) in which ``pid`` means something. The lease is short (:data:`LEASE`) and a
:class:`Lease` renews it while the job runs, so a holder that stopped — killed, out of memory, its
machine gone — blocks the job only until its lease runs out, and not even that long for a process
in the same scope (same host or container), which sees that the holder's pid is gone.

Two holders never both act: taking over is a compare-and-delete in the acquiring transaction, and
work that must happen at most once renews the lease inside its own transaction (:func:`fence`),
which fails once another process has taken over.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path

from sqlalchemy import delete, update
from sqlalchemy.ext.asyncio import AsyncSession

from kbot.db import Database
from kbot.db.models import JobLock, utcnow
from kbot.errors import KbotError, StoreError

log = logging.getLogger(__name__)
# A holder that stopped on another host blocks the job at most this long.
LEASE = timedelta(minutes=2)
RENEW_EVERY = 20.0  # seconds: several renewals per lease, so a slow write or two loses nothing
MAX_HOLD = timedelta(hours=12)  # a job still going after this is taken for hung: its lease lapses


class LockLost(KbotError):
    """The job's lease lapsed and another process may have taken its lock."""


def holder_id() -> str:
    """This process's holder id; a fresh token each call, so two jobs of one process differ."""
    return f"{socket.gethostname()}:{os.getpid()}:{_scope()}:{uuid.uuid4().hex[:8]}"


def _scope() -> str:
    """Processes with the same scope see each other's pids: same host, boot and pid namespace."""
    parts = [socket.gethostname()]
    with contextlib.suppress(OSError):  # not Linux: the host name alone
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
        parts.append(os.readlink("/proc/self/ns/pid"))
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:12]


def gone(holder: str) -> bool:
    """True only when ``holder`` certainly stopped: it ran in our scope and its pid is free."""
    parts = holder.split(":")
    if len(parts) != 4 or not parts[1].isdigit() or parts[2] != _scope():
        return False  # another host or container, or not an id of ours: its lease decides
    pid = int(parts[1])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, another user's
    try:  # a killed process its parent has not reaped yet is a zombie: gone too
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


async def acquire(db: Database, name: str, holder: str) -> bool:
    """Take lock ``name`` for ``holder`` unless a live holder has it; a stopped holder's is taken over."""
    now = utcnow()
    async with db.session() as s:
        # The first statement writes, so on SQLite this transaction holds the write lock throughout.
        expired = await s.execute(
            delete(JobLock)
            .where(JobLock.name == name, JobLock.holder != holder, JobLock.expires_at < now)
            .returning(JobLock.holder)
        )
        for (old,) in expired:
            log.warning("took over the %s lock from %s: its lease expired", name, old)
        current = await s.get(JobLock, name)
        if current is not None and current.holder != holder and gone(current.holder):
            await s.execute(delete(JobLock).where(JobLock.name == name, JobLock.holder == current.holder))
            log.warning("took over the %s lock from %s: its process is gone", name, current.holder)
        taken = await s.execute(
            db.insert(JobLock)
            .values(name=name, holder=holder, expires_at=now + LEASE)
            .on_conflict_do_nothing(index_elements=["name"])
            .returning(JobLock.name)
        )
        return taken.first() is not None


async def fence(s: AsyncSession, name: str, holder: str) -> bool:
    """Renew the lease inside ``s``; False if the lock is no longer ours. Until ``s`` commits, the
    row stays locked (PostgreSQL) or the database is (SQLite): nobody takes over in between."""
    renewed = await s.execute(
        update(JobLock)
        .where(JobLock.name == name, JobLock.holder == holder)
        .values(expires_at=utcnow() + LEASE)
        .returning(JobLock.name)
    )
    return renewed.first() is not None


async def release(db: Database, name: str, holder: str) -> None:
    async with db.session() as s:
        await s.execute(delete(JobLock).where(JobLock.name == name, JobLock.holder == holder))


class Lease:
    """Renews ``holder``'s lease on lock ``name`` every ``every`` seconds while the job runs.

    From a thread with its own event loop and connection: the job's loop can be busy for long
    stretches (the export embeds questions on it), and a lapsed lease would let a second job start.
    """

    def __init__(self, db: Database, name: str, holder: str, every: float = RENEW_EVERY) -> None:
        self._url = db.url.render_as_string(hide_password=False)
        self._name, self._holder, self._every = name, holder, every
        self._stop, self.lost = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._main, name=f"lease-{name}", daemon=True)

    def __enter__(self) -> Lease:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def check(self) -> None:
        """Raise :class:`LockLost` once a renewal found the lock taken over."""
        if self.lost.is_set():
            raise LockLost(f"The {self._name} job lost its lock (its lease lapsed); it stops here.")

    def _main(self) -> None:
        asyncio.run(self._beat())

    async def _beat(self) -> None:
        db = Database(self._url)
        deadline = time.monotonic() + MAX_HOLD.total_seconds()
        try:
            while not self._stop.wait(self._every):
                if time.monotonic() > deadline:
                    log.warning(
                        "the %s job runs longer than %s; its lock is no longer renewed", self._name, MAX_HOLD
                    )
                    return
                try:
                    async with db.session() as s:
                        ours = await fence(s, self._name, self._holder)
                except StoreError as exc:
                    # A blip: the lease outlasts a few missed renewals, and the next one may work.
                    log.warning("could not renew the %s lock: %s", self._name, exc)
                    continue
                if not ours:
                    self.lost.set()
                    log.error("the %s job lost its lock; it stops at its next step", self._name)
                    return
        finally:
            await db.close()
