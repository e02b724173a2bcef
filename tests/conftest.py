"""Shared fixtures: real SQLite and PostgreSQL stores, real Qdrant stores, the real bundled embedder.

PostgreSQL: ``KBOT_TEST_POSTGRES_URL`` (default: the server on 127.0.0.1:5432, database ``test``).
Each test session creates its own database there and drops it at the end. When the server is
unreachable the PostgreSQL tests fail under CI (``CI=true``) and are skipped elsewhere.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from kbot.db import Database
from kbot.settings import Settings
from knowledge.base import KnowledgeBase
from knowledge.embeddings import SentenceTransformerEmbedder
from tests.postgres import POSTGRES_URL, admin_sql, fresh_database

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "handbook"


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session."""
    import psycopg

    try:
        admin_sql("SELECT 1")
    except psycopg.OperationalError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required in CI but unreachable at {POSTGRES_URL}: {exc}")
        pytest.skip(f"PostgreSQL unreachable at {POSTGRES_URL}: {exc}")
    with fresh_database("kbot_test") as (_, url):
        yield url


@pytest.fixture
def own_postgres(postgres_url: str) -> Iterator[str]:
    """A PostgreSQL database for one test alone (counted, cut off, or filled without clearing)."""
    with fresh_database("kbot_own") as (_, url):
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def sql_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each store test runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'kbot.db'}"
    base: str = request.getfixturevalue("postgres_url")
    return base


@pytest.fixture
async def database(sql_url: str) -> AsyncIterator[Database]:
    db = Database(sql_url)
    await db.migrate()
    yield db
    await clear_tables(db)
    await db.close()


async def clear_tables(db: Database) -> None:
    """Leave the next test empty tables on the shared PostgreSQL database."""
    from kbot.db.models import Base

    async with db.engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            await conn.execute(table.delete())


@pytest.fixture(scope="session")
def embedder() -> SentenceTransformerEmbedder:
    """The real bundled all-MiniLM-L6-v2, loaded once for the whole session."""
    e = SentenceTransformerEmbedder("all-MiniLM-L6-v2")
    e.embed(["warm up"])
    return e


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", chunk_tokens=128, chunk_overlap_tokens=16)


@pytest.fixture
async def kb(settings: Settings, embedder: SentenceTransformerEmbedder) -> AsyncIterator[KnowledgeBase]:
    """A knowledge base on embedded defaults (SQLite + Qdrant Edge) with the real embedder."""
    base = await KnowledgeBase.open(settings, embedder=embedder)
    yield base
    await base.close()


@pytest.fixture(scope="session")
def base_model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The bundled GGUF converted to safetensors by the real conversion code, once per session."""
    from agent.base_model import BUNDLED, resolve_base_model

    return resolve_base_model(BUNDLED, tmp_path_factory.mktemp("models"))
