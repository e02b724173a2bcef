"""``GET /readyz``: whether this server can answer now, checked against what answering needs.

``/healthz`` is liveness (the process serves HTTP). Readiness asks the SQL store (``SELECT 1``),
the vector store (a count) and the model backend (the server's model list; a local model must
be loaded), each within :data:`TIMEOUT_S`, all at once, and keeps the verdict for
:data:`CACHE_S` so a load balancer polling every second costs one round of checks per few
seconds. What is down is named in the 503; why is logged (hosts and errors stay out of an
unauthenticated response).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from sqlalchemy import text

from agent.answering import Answerer
from kbot.errors import KbotError

log = logging.getLogger(__name__)
TIMEOUT_S = 2.0
CACHE_S = 3.0
Check = Callable[[], Awaitable[object]]


class Readiness:
    def __init__(self, answerer: Answerer, clock: Callable[[], float] = time.monotonic) -> None:
        kb = answerer.kb

        async def database() -> None:
            async with kb.db.session() as s:
                await s.execute(text("SELECT 1"))

        async def vector_store() -> None:
            # Opened on first use (a fresh server has not searched yet); opening twice is a no-op.
            await kb.store.prepare(kb.embedder.dimension)
            await kb.store.count("__readyz__")

        self._checks: dict[str, Check] = {
            "database": database,
            "vector_store": vector_store,
            "model": answerer.backend.ready,
        }
        self._clock = clock
        self._verdict: dict[str, str] = {}
        self._at = float("-inf")
        self._lock = asyncio.Lock()  # concurrent probes share one round of checks

    async def check(self) -> dict[str, str]:
        """Each part: "ok", "down" or "timeout" (at most :data:`CACHE_S` old)."""
        async with self._lock:
            if self._clock() - self._at >= CACHE_S:
                names = list(self._checks)
                results = await asyncio.gather(*(self._one(n) for n in names))
                self._verdict, self._at = dict(zip(names, results, strict=True)), self._clock()
            return dict(self._verdict)

    async def _one(self, name: str) -> str:
        try:
            async with asyncio.timeout(TIMEOUT_S):
                await self._checks[name]()
        except TimeoutError:
            log.warning("readiness: the %s did not answer within %g s", name.replace("_", " "), TIMEOUT_S)
            return "timeout"
        except (KbotError, OSError) as exc:
            log.warning("readiness: the %s is down: %s", name.replace("_", " "), exc)
            return "down"
        return "ok"
