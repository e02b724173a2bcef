"""The SQL store and the knowledge catalog, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import func, inspect, select

from kbot.db import Database
from kbot.db.models import Base, Chunk, Document
from kbot.errors import InvalidNameError, KnowledgeError, StoreError, UnknownCollectionError
from knowledge.catalog import Catalog, ChunkRow, check_collection_name, check_groups


async def test_migrations_create_exactly_the_model_schema(database: Database) -> None:
    async with database.engine.connect() as conn:
        tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
        columns = await conn.run_sync(
            lambda c: {t: {col["name"] for col in inspect(c).get_columns(t)} for t in Base.metadata.tables}
        )
    # LangGraph's PostgreSQL checkpointer keeps its own checkpoint* tables in the same database.
    ours = {t for t in tables if not t.startswith("checkpoint")}
    assert set(Base.metadata.tables) | {"alembic_version"} == ours
    for name, table in Base.metadata.tables.items():
        assert columns[name] == {c.name for c in table.columns}, name


async def test_migrations_and_models_do_not_drift(database: Database) -> None:
    """Alembic's autogenerate finds nothing to add: every index and constraint is in a migration."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    def diff(conn: object) -> list[object]:
        context = MigrationContext.configure(
            conn,  # type: ignore[arg-type]
            opts={
                "include_name": lambda name, kind, _p: kind != "table" or not name.startswith("checkpoint")
            },
        )
        return list(compare_metadata(context, Base.metadata))

    async with database.engine.connect() as conn:
        assert await conn.run_sync(diff) == []


async def test_migrate_is_idempotent_and_concurrent_safe(sql_url: str) -> None:
    dbs = [Database(sql_url) for _ in range(3)]
    await asyncio.gather(*(db.migrate() for db in dbs))
    await dbs[0].migrate()
    for db in dbs:
        await db.close()


async def test_unreachable_store_is_a_clear_error() -> None:
    db = Database("postgresql+psycopg://nobody:secret@127.0.0.1:1/none")
    with pytest.raises(StoreError, match="Cannot open or migrate the SQL store at postgresql") as info:
        await db.migrate()
    assert "secret" not in str(info.value)
    await db.close()


async def _save(catalog: Catalog, source: str, chunks: list[ChunkRow], content_hash: str = "h1") -> None:
    await catalog.save_document(
        collection="hr",
        source=source,
        title="Title",
        content_hash=content_hash,
        ingest_key="k",
        acl=["*"],
        size_bytes=10,
        chunks=chunks,
    )


async def test_catalog_tracks_documents_and_chunks(database: Database) -> None:
    catalog = Catalog(database)
    await catalog.ensure_collection("hr", "all-MiniLM-L6-v2", 384)
    await catalog.ensure_collection("hr", "all-MiniLM-L6-v2", 384)  # idempotent
    await _save(catalog, "a.md", [ChunkRow("c1", 0, "H", 10), ChunkRow("c2", 1, "H", 12)])
    await _save(catalog, "b.md", [ChunkRow("c3", 0, "", 5)])
    docs = await catalog.documents("hr")
    assert set(docs) == {"a.md", "b.md"} and docs["a.md"].acl == ["*"]

    # Replacing a document replaces its chunk rows.
    await _save(catalog, "a.md", [ChunkRow("c4", 0, "H", 9)], content_hash="h2")
    async with database.session() as s:
        ids = set(await s.scalars(select(Chunk.id)))
        n_docs = await s.scalar(select(func.count(Document.id)))
    assert ids == {"c3", "c4"} and n_docs == 2
    assert (await catalog.documents("hr"))["a.md"].content_hash == "h2"

    [stats] = await catalog.stats()
    assert (stats.name, stats.documents, stats.chunks) == ("hr", 2, 2)

    await catalog.delete_document(docs["b.md"].id)
    async with database.session() as s:
        assert set(await s.scalars(select(Chunk.id))) == {"c4"}


async def test_model_mismatch_is_refused(database: Database) -> None:
    catalog = Catalog(database)
    await catalog.ensure_collection("hr", "all-MiniLM-L6-v2", 384)
    with pytest.raises(KnowledgeError, match="was built with embedding model"):
        await catalog.ensure_collection("hr", "bge-m3", 1024)


async def test_unknown_collection_names_the_known_ones(database: Database) -> None:
    catalog = Catalog(database)
    await catalog.ensure_collection("hr", "m", 8)
    with pytest.raises(UnknownCollectionError, match=r"'eng' does not exist\. Known collections: hr\."):
        await catalog.require(["eng"])
    await catalog.require(["hr"])


@pytest.mark.parametrize("name", ["", "-x", "a b", "x" * 64, "../etc"])
def test_bad_collection_names(name: str) -> None:
    with pytest.raises(InvalidNameError):
        check_collection_name(name)


def test_group_names() -> None:
    assert check_groups(["hr", "S0123ABC", "hr", "0b6f-aad@tenant"]) == ["0b6f-aad@tenant", "S0123ABC", "hr"]
    for bad in ("*", "a b", ""):
        with pytest.raises(InvalidNameError):
            check_groups([bad])
