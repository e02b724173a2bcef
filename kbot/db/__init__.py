"""The SQL store: one async SQLAlchemy engine over SQLite (default) or PostgreSQL.

The schema is owned by Alembic (``kbot/db/migrations``); :meth:`Database.migrate` brings any
database to the newest revision and is safe to call from several processes at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import NullPool, create_engine, event
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from kbot.errors import StoreError
from kbot.locks import TaskLock

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Any constant works; it only has to be the same for every kbot process sharing a database.
_MIGRATION_LOCK_ID = 0x6B626F74
# Alembic keeps its running context in module globals: one migration per process at a time.
_MIGRATION_THREAD_LOCK = threading.Lock()
# Migrations run on a synchronous driver in a worker thread (Alembic is synchronous).
_SYNC_DRIVERS = {"sqlite+aiosqlite": "sqlite", "postgresql+asyncpg": "postgresql+psycopg"}


class Database:
    """Owns the engine and hands out sessions."""

    def __init__(self, url: str) -> None:
        self.url = make_url(url)
        kwargs: dict[str, Any] = {}
        if self.url.get_backend_name() == "sqlite":
            if self.url.database and self.url.database != ":memory:":
                Path(self.url.database).parent.mkdir(parents=True, exist_ok=True)
            # How long a write waits for another writer: long enough for kbot's own short
            # transactions, short enough that a file locked by something else is reported to
            # the asker in seconds.
            kwargs["connect_args"] = {"timeout": 5}
        else:
            kwargs["pool_pre_ping"] = True
            # An unreachable server fails the request in seconds instead of hanging it.
            kwargs["connect_args"] = {"connect_timeout": 5}
            # Bursts of votes and questions each hold a connection briefly; the default pool of
            # 5 + 10 makes a burst of a thousand wait long enough to time out.
            kwargs["pool_size"] = 10
            kwargs["max_overflow"] = 30
        # Parameters are questions, answers and votes: never in error messages or SQL logs.
        self.engine: AsyncEngine = create_async_engine(self.url, hide_parameters=True, **kwargs)
        if self.url.get_backend_name() == "sqlite":
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        # SQLite has one writer at a time, and a transaction holds its lock across awaits: under
        # load, waiting in SQLite's busy handler would time out. Sessions of this process queue
        # here instead, so the busy timeout only ever covers other processes.
        self._turns = TaskLock() if self.url.get_backend_name() == "sqlite" else None

    @property
    def display_url(self) -> str:
        """The URL with any password masked, for messages and logs."""
        return self.url.render_as_string(hide_password=True)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A session in a transaction: committed on success, rolled back on error.

        Failures of the database itself (unreachable, constraint violated) leave as
        :class:`StoreError`, so every caller can tell the user something plain.
        """
        async with self._turns or contextlib.nullcontext():
            try:
                async with self._sessions() as session, session.begin():
                    yield session
            except SQLAlchemyError as exc:
                raise StoreError(f"The SQL store at {self.display_url} failed: {_reason(exc)}") from exc

    def insert(self, table: Any) -> Any:
        """An INSERT with this dialect's ``on_conflict_do_nothing`` / ``on_conflict_do_update``.

        SQLite and PostgreSQL spell upserts the same way in SQLAlchemy, but through their own
        dialect's ``insert``; the two are the only dialects kbot supports.
        """
        if self.url.get_backend_name() == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            return pg_insert(table)
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table)

    async def migrate(self) -> None:
        """Upgrade the schema to the newest Alembic revision.

        Safe to run from several tasks, threads or processes at once: they are serialised by a
        lock in this process, plus a PostgreSQL advisory lock or a lock file beside the SQLite file.
        """
        sync_url = self.url.set(drivername=_SYNC_DRIVERS.get(self.url.drivername, self.url.drivername))
        try:
            await asyncio.to_thread(_migrate, sync_url)
        except (SQLAlchemyError, OSError) as exc:
            raise StoreError(
                f"Cannot open or migrate the SQL store at {self.display_url}: {_reason(exc)}"
            ) from exc

    async def close(self) -> None:
        await self.engine.dispose()


def _migrate(url: URL) -> None:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with _MIGRATION_THREAD_LOCK, _sqlite_file_lock(url):
            if url.get_backend_name() == "sqlite":
                _use_wal(engine)
            with engine.begin() as conn:
                _upgrade(conn, url.get_backend_name())
    finally:
        engine.dispose()


@contextmanager
def _sqlite_file_lock(url: URL) -> Iterator[None]:
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        yield
        return
    with open(f"{url.database}.migrate-lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _upgrade(conn: Connection, backend: str) -> None:
    from alembic import command
    from alembic.config import Config

    if backend == "postgresql":
        # Replicas starting together must not run the same migration twice.
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK_ID})")
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = conn
    command.upgrade(config, "head")


def _use_wal(engine: Engine) -> None:
    """Put the file in WAL mode, which lets readers (the server) proceed while a writer (ingest)
    commits. The mode is kept in the file, so it is set once here, under the migration lock: set
    on every new connection instead, it is a change of mode each time (a fresh connection does
    not know the file's mode yet), and replicas opening at once could find the file locked."""
    with engine.connect() as conn:
        mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
        if str(mode).lower() != "wal":  # an in-memory database stays "memory": nothing to share
            conn.exec_driver_sql("PRAGMA journal_mode=WAL")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _reason(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    return str(orig or exc).strip().splitlines()[0]
