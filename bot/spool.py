"""Feedback that arrives while the SQL store is down waits on local disk, in arrival order.

People's votes are the learning loop's data: a database outage must not lose them. An event the
store refuses is appended to a JSON-lines file (flushed and fsynced before the platform gets
its ack) and replayed, oldest first, once the store answers again. While anything waits, newer
events queue behind it, so a vote changed during the outage ends as its last value. Replaying
an event twice is harmless: every feedback write is an upsert or a delete.

The file is locked (``flock``) for every append and rewrite, so processes sharing a data folder
never interleave or drop each other's lines.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from kbot.errors import KbotError, StoreError

log = logging.getLogger(__name__)


class FeedbackSpool:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = asyncio.Lock()  # one replay at a time in this process
        self._pending = self._count()

    @property
    def pending(self) -> int:
        return self._pending

    def _count(self) -> int:
        try:
            with self.path.open("rb") as f:
                return sum(1 for line in f if line.strip())
        except FileNotFoundError:
            return 0

    @contextmanager
    def _locked(self, mode: str) -> Iterator[IO[str]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open(mode, encoding="utf-8") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield f
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def put(self, event: dict[str, Any]) -> None:
        """Keep ``event`` (JSON-able) on disk until :meth:`replay` writes it (durable on return)."""
        line = json.dumps(event, ensure_ascii=False) + "\n"
        with self._locked("a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self._pending += 1

    async def replay(self, apply: Callable[[dict[str, Any]], Awaitable[Any]]) -> int:
        """Write waiting events in order with ``apply``; stop at the first store failure.

        An event that can never be written (an answer that does not exist: a forged button) is
        dropped with a log line; everything else stays for the next try. Returns how many went.
        """
        async with self._lock:
            with self._locked("a+") as f:
                f.seek(0)
                lines = [line for line in f.read().splitlines() if line.strip()]
            done = 0
            try:
                for line in lines:
                    try:
                        await apply(json.loads(line))
                    except StoreError:
                        raise
                    except (KbotError, ValueError, TypeError) as exc:
                        log.error(
                            "dropped waiting feedback that cannot be recorded (%s): %s", exc, line[:300]
                        )
                    done += 1
            except StoreError as exc:
                log.warning(
                    "the SQL store is still failing; %d feedback events wait: %s", len(lines) - done, exc
                )
            finally:
                self._forget(done)
            return done

    def _forget(self, done: int) -> None:
        """Drop the first ``done`` lines: only appends happened since they were read (under the lock)."""
        if not done:
            return
        with self._locked("a+") as f:
            f.seek(0)
            rest = [line for line in f.read().splitlines() if line.strip()][done:]
            f.seek(0)
            f.truncate()
            f.write("".join(line + "\n" for line in rest))
            f.flush()
            os.fsync(f.fileno())
        self._pending = len(rest)
        if not rest:
            log.info("all waiting feedback is recorded")
