"""Conversation memory: LangGraph's checkpointer, per thread, beside the data or in PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from kbot.settings import Settings


def open_memory(settings: Settings) -> Any:
    """Conversation memory per thread: SQLite beside the data, or the PostgreSQL store."""
    from sqlalchemy.engine import make_url

    url = make_url(settings.sql_url)
    if url.get_backend_name() == "postgresql":
        conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
        return _postgres_saver(conninfo)
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return _setup(AsyncSqliteSaver.from_conn_string(str(settings.data_dir / "conversations.db")))


@contextlib.asynccontextmanager
async def _postgres_saver(conninfo: str) -> AsyncIterator[Any]:
    """LangGraph's PostgreSQL saver on a pool that checks connections before use: after a
    database restart or outage the next answer reconnects, where a single connection would
    stay broken until kbot restarts."""
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
    from psycopg.rows import dict_row
    from psycopg_pool import AsyncConnectionPool

    pool = AsyncConnectionPool(
        conninfo,
        min_size=1,
        max_size=8,
        timeout=10,
        open=False,
        check=AsyncConnectionPool.check_connection,
        # What the saver needs of its connections (see AsyncPostgresSaver.from_conn_string).
        kwargs={"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row, "connect_timeout": 5},
    )
    async with pool:
        saver = AsyncPostgresSaver(pool)  # type: ignore[arg-type]
        # Replicas starting together on a fresh database would race to create the tables
        # ("type checkpoints already exists"): one at a time. The lock is polled, not waited
        # for: a waiting statement holds a snapshot, and the holder's CREATE INDEX CONCURRENTLY
        # would wait for it in turn.
        async with pool.connection() as conn:
            while not await _try_lock(conn):
                await asyncio.sleep(0.2)
            try:
                await saver.setup()
            finally:
                await conn.execute("SELECT pg_advisory_unlock(hashtext('kbot:checkpoints:setup'))")
        yield saver


async def _try_lock(conn: Any) -> bool:
    cursor = await conn.execute("SELECT pg_try_advisory_lock(hashtext('kbot:checkpoints:setup')) AS taken")
    row = await cursor.fetchone()
    return bool(row["taken"])


class _setup:
    """Enter a saver's context and create its tables."""

    def __init__(self, manager: Any) -> None:
        self._manager = manager

    async def __aenter__(self) -> Any:
        saver = await self._manager.__aenter__()
        await saver.setup()
        return saver

    async def __aexit__(self, *exc: object) -> None:
        await self._manager.__aexit__(*exc)
