"""Locks: one the task holding it may take again (code that nests, a session in a session), and
one lock or semaphore per key (a person, an address) that lives only while someone uses it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from typing import Any, Generic, TypeVar

T = TypeVar("T")


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


class PerKey(Generic[T]):
    """One ``T`` (made by ``make``) per key, shared by everyone using that key at the moment and
    dropped with its last user: per-person locks never pile up for people long gone."""

    def __init__(self, make: Callable[[], T]) -> None:
        self._make = make
        self._items: dict[Hashable, tuple[T, int]] = {}

    @contextmanager
    def use(self, key: Hashable) -> Iterator[T]:
        item, users = self._items.get(key) or (self._make(), 0)
        self._items[key] = (item, users + 1)
        try:
            yield item
        finally:
            item, users = self._items[key]
            if users == 1:
                del self._items[key]
            else:
                self._items[key] = (item, users - 1)

    def __len__(self) -> int:
        return len(self._items)
