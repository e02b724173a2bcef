"""The PostgreSQL server the tests and benchmarks use, and databases of their own on it."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

POSTGRES_URL = os.environ.get("KBOT_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def admin_dsn() -> str:
    """A libpq DSN for the server's maintenance connection (CREATE/ALTER/DROP DATABASE)."""
    from sqlalchemy.engine import make_url

    return make_url(POSTGRES_URL).set(drivername="postgresql").render_as_string(hide_password=False)


def admin_sql(statement: str, *args: object) -> None:
    import psycopg

    with psycopg.connect(admin_dsn(), autocommit=True, connect_timeout=5) as admin:
        admin.execute(statement, args or None)  # type: ignore[arg-type]


@contextmanager
def fresh_database(prefix: str) -> Iterator[tuple[str, str]]:
    """A new, empty database ``(name, SQLAlchemy URL)``, dropped afterwards even if a test cut it off."""
    from sqlalchemy.engine import make_url

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin_sql(f'CREATE DATABASE "{name}"')
    try:
        yield name, make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        admin_sql(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def cut_off(name: str) -> None:
    """A real outage of database ``name``: new connections refused, open sessions terminated."""
    admin_sql(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
    admin_sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", name)


def reopen(name: str) -> None:
    admin_sql(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
