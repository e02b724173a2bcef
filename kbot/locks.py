"""A lock the task holding it may take again: for code that can nest (a session in a session)."""

from __future__ import annotations

import asyncio
from typing import Any


class TaskLock:
    """An asyncio lock, re-entrant for the task that holds it; waiters are served in order."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._owner: asyncio.Task[Any] | None = None
        self._depth = 0

    def busy(self) -> bool:
        return self._lock.locked()

    async def __aenter__(self) -> None:
        task = asyncio.current_task()
        if self._owner is not task or task is None:
            await self._lock.acquire()
            self._owner = task
        self._depth += 1

    async def __aexit__(self, *exc: object) -> None:
        self._depth -= 1
        if not self._depth:
            self._owner = None
            self._lock.release()
