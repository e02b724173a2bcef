"""kbot backup while serving and ingesting, kbot restore, and the same search results after."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bot.backup import backup, restore
from kbot.errors import ConfigError
from kbot.settings import Settings
from knowledge.base import KnowledgeBase
from knowledge.embeddings import Embedder
from knowledge.vectorstore.shared import ShardHost
from tests.conftest import EXAMPLES

QUERIES = ["How many days of sick leave do I get?", "婚假可以請幾天？", "lost laptop", "expense receipts"]


def _bulk(folder: Path, n: int) -> None:
    folder.mkdir()
    for i in range(n):
        body = " ".join(
            f"Facility {i} rule {j}: badge doors on floor {j} lock at {i % 12 + 1} pm." for j in range(30)
        )
        (folder / f"facility-{i:02}.md").write_text(f"# Facility {i}\n\n{body}\n")


async def _results(kb: KnowledgeBase, collection: str) -> list[list[tuple[str, float]]]:
    return [[(h.chunk_id, round(h.score, 5)) for h in await kb.search(q, [collection])] for q in QUERIES]


async def test_backup_during_ingest_then_restore_gives_the_same_search_results(
    tmp_path: Path, embedder: Embedder
) -> None:
    settings = Settings(data_dir=tmp_path / "live", chunk_tokens=128, chunk_overlap_tokens=16)
    _bulk(tmp_path / "bulk", 24)
    kb = await KnowledgeBase.open(settings, embedder=embedder, owner=True)
    host = ShardHost(settings.data_dir)  # as kbot serve runs: the backup reaches its shard
    await host.start(kb.store)
    try:
        await kb.ingest([str(EXAMPLES)], "hr")
        ingesting = asyncio.create_task(kb.ingest([str(tmp_path / "bulk")], "bulk"))
        while not any(s.name == "bulk" and s.documents >= 3 for s in await kb.catalog.stats()):
            await asyncio.sleep(0.05)
        copied = await backup(settings, tmp_path / "backup")
        report = await ingesting
        assert len(report.added) == 24
        expected_hr = await _results(kb, "hr")
        expected_bulk = await _results(kb, "bulk")
        with pytest.raises(ConfigError, match="kbot serve runs on"):
            await restore(settings, tmp_path / "backup")
    finally:
        await host.close()
        await kb.close()
    assert 3 <= copied.documents < 24 + 4, "the backup was taken in the middle of the ingest"
    assert {"kbot.db", "qdrant"} <= set(copied.parts)

    elsewhere = Settings(data_dir=tmp_path / "restored", chunk_tokens=128, chunk_overlap_tokens=16)
    parts, aside = await restore(elsewhere, tmp_path / "backup")
    assert aside is None and "qdrant" in parts
    restored = await KnowledgeBase.open(elsewhere, embedder=embedder)
    try:
        assert await _results(restored, "hr") == expected_hr
        for stats in await restored.catalog.stats():  # the copy agrees with its catalog
            count = await restored.store.count(stats.name)
            assert count == stats.chunks if not copied.in_flight else count <= stats.chunks
        again = await restored.ingest([str(tmp_path / "bulk")], "bulk")
        assert len(again.unchanged) == copied.documents - 4 - len(copied.in_flight)
        assert await _results(restored, "bulk") == expected_bulk
    finally:
        await restored.close()

    # Restoring over live data moves it aside; nothing is deleted.
    parts, aside = await restore(elsewhere, tmp_path / "backup")
    assert aside is not None and (aside / "kbot.db").is_file() and (aside / "qdrant").is_dir()


async def test_the_copy_is_made_to_agree_with_its_catalog(tmp_path: Path, embedder: Embedder) -> None:
    """Vectors written by an ingest that had not yet written their catalog row are dropped; a
    document whose vectors are not all there is marked to be embedded again."""
    import sqlite3
    import uuid

    from bot.backup import Copied, _check_copy
    from knowledge.sparse import document_vector
    from knowledge.vectorstore import ChunkRecord
    from knowledge.vectorstore.edge import EdgeVectorStore

    settings = Settings(data_dir=tmp_path / "live", chunk_tokens=128, chunk_overlap_tokens=16)
    kb = await KnowledgeBase.open(settings, embedder=embedder)
    await kb.ingest([str(EXAMPLES)], "hr")
    await kb.close()
    copied = await backup(settings, tmp_path / "backup")  # nobody holds the shard: it opens it itself
    assert copied.in_flight == [] and copied.documents == 4
    copy = EdgeVectorStore(tmp_path / "backup" / "qdrant" / settings.qdrant_collection)
    await copy.load()
    points = await copy.points()
    db = sqlite3.connect(tmp_path / "backup" / "kbot.db")
    chunk, source = db.execute(
        "SELECT chunks.id, documents.source FROM chunks JOIN documents ON documents.id = document_id LIMIT 1"
    ).fetchone()
    stray = str(uuid.uuid4())
    payload = {"collection": "hr", "source": "new.md", "title": "", "heading": "", "text": "x", "acl": ["*"],
               "ordinal": 0}  # fmt: skip
    await copy.upsert([ChunkRecord(stray, embedder.embed(["x"])[0], document_vector("x"), payload)])  # type: ignore[arg-type]
    await copy.delete_points([chunk])
    await copy.close()

    report = Copied(tmp_path / "backup")
    await _check_copy(tmp_path / "backup", settings.qdrant_collection, report)
    assert report.in_flight == [f"hr: {source}"]
    assert report.points == len(points) - 1
    [(content_hash,)] = db.execute(
        "SELECT content_hash FROM documents WHERE source = ?", (source,)
    ).fetchall()
    assert content_hash == ""  # the next kbot ingest embeds it again
    db.close()
