"""Feedback that arrives while the SQL store is down waits on local disk, in arrival order.

People's votes are the learning loop's data: a database outage must not lose them. An event the
store refuses is appended to a JSON-lines file (flushed and fsynced before the platform gets
its ack) and replayed, oldest first, once the store answers again. While anything waits, newer
events queue behind it, so a vote changed during the outage ends as its last value. Replaying
an event twice is harmless: every feedback write is an upsert or a delete, and carries the time
kbot received it, so an older event never overwrites a newer vote.

Each spool has its own file in the spool folder (``feedback-<host>-<pid>-<random>.jsonl``) and
holds a lock on its ``.owner`` file for as long as it runs. Replicas may share the folder (a volume):
a file whose owner lock can be taken belongs to a process that is gone, and whoever notices
first replays it and removes it — a replica that dies for good during an outage loses nothing.
Every append and rewrite of a file is locked too (``flock``), so nothing interleaves.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from kbot.errors import KbotError, StoreError

log = logging.getLogger(__name__)
Apply = Callable[[dict[str, Any]], Awaitable[Any]]
ERASED = "erased"  # a line whose event kbot forget removed: kept as a blank, skipped on replay


class FeedbackSpool:
    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        name = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.path = folder / f"feedback-{name}.jsonl"
        owner = _claim(self.path)
        if owner is None:
            raise StoreError(f"Another running kbot process spools feedback into {self.path}.")
        self._owner = owner  # held until close(): while it is, no one else replays this file
        self._lock = asyncio.Lock()  # one replay at a time in this process
        self._pending = 0
        self.rescan()

    @property
    def pending(self) -> int:
        """Events waiting: this process's, and those of gone processes it found in the folder."""
        return self._pending

    def rescan(self) -> int:
        """Count again, taking in files that processes gone since have left; the new count."""
        self._pending = _count(self.path) + sum(_count(p) for p in self._orphans())
        return self._pending

    def put(self, event: dict[str, Any]) -> None:
        """Keep ``event`` (JSON-able) on disk until :meth:`replay` writes it (durable on return)."""
        line = json.dumps(event, ensure_ascii=False) + "\n"
        with _locked(self.path, "a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self._pending += 1

    async def replay(self, apply: Apply) -> int:
        """Write waiting events in order with ``apply``: gone processes' files first (they are
        older), then this process's; stop at the first store failure.

        An event that can never be written (an answer that does not exist: a forged button) is
        dropped with a log line; everything else stays for the next try. Returns how many went.
        """
        async with self._lock:
            done, failure = 0, None
            for orphan in self._orphans():
                owner = _claim(orphan)
                if owner is None:
                    continue  # its process is back, or another one adopted it just now
                try:
                    written, failure = await _replay_file(orphan, apply)
                    done += written
                    if not _count(orphan):
                        orphan.unlink()
                        _owner_path(orphan).unlink(missing_ok=True)
                        log.info("recorded the waiting feedback of a gone process (%s)", orphan.name)
                finally:
                    owner.close()
                if failure:
                    break
            if failure is None:
                written, failure = await _replay_file(self.path, apply)
                done += written
            if failure is not None:
                log.warning("the SQL store is still failing; feedback waits on disk: %s", failure)
            if not self.rescan() and done:
                log.info("all waiting feedback is recorded")
            return done

    def close(self) -> None:
        """Let go of this process's file: removed when empty, else left for whoever comes next."""
        if not _count(self.path):
            self.path.unlink(missing_ok=True)
            _owner_path(self.path).unlink(missing_ok=True)
        self._owner.close()

    def _orphans(self) -> list[Path]:
        """Other processes' files whose owner is gone (checked by taking its lock, then letting go)."""
        found = []
        for path in sorted(self.folder.glob("feedback*.jsonl")):
            if path == self.path:
                continue
            owner = _claim(path)
            if owner is not None:
                owner.close()
                found.append(path)
        return found


async def _replay_file(path: Path, apply: Apply) -> tuple[int, StoreError | None]:
    """Apply ``path``'s events in order: how many went, and the store failure that stopped it."""
    with _locked(path, "a+") as f:
        f.seek(0)
        lines = [line for line in f.read().splitlines() if line.strip()]
    done = 0
    try:
        for line in lines:
            try:
                event = json.loads(line)
                if event.get(ERASED) is None:
                    await apply(event)
            except StoreError as exc:
                return done, exc
            except (KbotError, ValueError, TypeError) as exc:
                log.error("dropped waiting feedback that cannot be recorded (%s): %s", exc, line[:300])
            done += 1
    finally:
        _forget(path, done)
    return done, None


def erase(folder: Path, platform: str, user: str) -> int:
    """Blank out ``user``'s waiting feedback in every spool file there (``kbot forget``); how much.

    Lines are overwritten in place, never removed: a replay in progress drops the lines it has
    written by count, so the count must not change under it.
    """
    erased = 0
    for path in sorted(folder.glob("feedback*.jsonl")) if folder.is_dir() else []:
        with _locked(path, "r+") as f:
            lines = f.read().splitlines()
            kept = []
            for line in lines:
                try:
                    event = json.loads(line) if line.strip() else {}
                except ValueError:
                    event = {}
                if (
                    isinstance(event, dict)
                    and event.get("platform") == platform
                    and event.get("user") == user
                ):
                    kept.append(json.dumps({ERASED: True}))
                    erased += 1
                else:
                    kept.append(line)
            f.seek(0)
            f.truncate()
            f.write("".join(line + "\n" for line in kept))
            f.flush()
            os.fsync(f.fileno())
    return erased


def _forget(path: Path, done: int) -> None:
    """Drop the first ``done`` lines: only appends happened since they were read (under the lock)."""
    if not done:
        return
    with _locked(path, "a+") as f:
        f.seek(0)
        rest = [line for line in f.read().splitlines() if line.strip()][done:]
        f.seek(0)
        f.truncate()
        f.write("".join(line + "\n" for line in rest))
        f.flush()
        os.fsync(f.fileno())


def _count(path: Path) -> int:
    try:
        with path.open("rb") as f:
            return sum(1 for line in f if line.strip())
    except FileNotFoundError:
        return 0


def _owner_path(path: Path) -> Path:
    return path.with_suffix(".owner")


def _claim(path: Path) -> IO[str] | None:
    """The owner lock of ``path``'s spool file, if no living process holds it (closing releases it)."""
    owner = _owner_path(path).open("a")
    try:
        fcntl.flock(owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner.close()
        return None
    return owner


@contextmanager
def _locked(path: Path, mode: str) -> Iterator[IO[str]]:
    with path.open(mode, encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield f
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
