"""Ingestion on embedded defaults with the real embedder: incremental sync and bad input."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import select

from kbot.db.models import Chunk
from kbot.errors import UnknownCollectionError
from knowledge.base import KnowledgeBase
from tests.conftest import EXAMPLES, clear_tables


@pytest.fixture
def docs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the example handbook; the test runs from its parent so sources are relative."""
    target = tmp_path / "handbook"
    shutil.copytree(EXAMPLES, target)
    monkeypatch.chdir(tmp_path)
    return target


@pytest.fixture(params=["embedded", pytest.param("scale-out", marks=pytest.mark.postgres)])
async def any_kb(request, settings, embedder) -> AsyncIterator[KnowledgeBase]:  # type: ignore[no-untyped-def]
    """Embedded (SQLite + Qdrant Edge) and scale-out (PostgreSQL + qdrant-client) configurations."""
    if request.param == "scale-out":
        settings = settings.model_copy(
            update={"database_url": request.getfixturevalue("postgres_url"), "qdrant_url": ":memory:"}
        )
    base = await KnowledgeBase.open(settings, embedder=embedder)
    yield base
    if request.param == "scale-out":
        await clear_tables(base.db)
    await base.close()


async def test_sync_skips_unchanged_reembeds_changed_deletes_removed(
    any_kb: KnowledgeBase, docs: Path
) -> None:
    kb = any_kb
    first = await kb.ingest(["handbook"], "hr")
    assert sorted(first.added) == sorted(os.path.join("handbook", p.name) for p in docs.iterdir())
    assert first.failed == [] and first.chunks > 0
    [stats] = await kb.collections()
    assert stats.documents == 4 and stats.chunks == first.chunks

    again = await kb.ingest(["handbook"], "hr")
    assert (again.added, again.updated, again.deleted, again.chunks) == ([], [], [], 0)
    assert len(again.unchanged) == 4

    (docs / "expenses.md").write_text("# Travel and expenses\n\nMeals are reimbursed up to 75 EUR per day.\n")
    (docs / "it-security.txt").unlink()
    third = await kb.ingest(["handbook"], "hr")
    assert third.updated == ["handbook/expenses.md"]
    assert third.deleted == ["handbook/it-security.txt"]
    assert len(third.unchanged) == 2

    hits = await kb.search("meal allowance per day", ["hr"], limit=3)
    texts = " ".join(h.text for h in hits)
    assert "75 EUR" in texts and "60 EUR" not in texts
    hits = await kb.search("lost laptop service desk extension", ["hr"], limit=5)
    assert all(h.source != "handbook/it-security.txt" for h in hits)
    [stats] = await kb.collections()
    assert stats.documents == 3
    assert stats.chunks == await kb.store.count("hr")


async def test_unchanged_reingest_does_not_touch_the_model(settings, docs: Path) -> None:  # type: ignore[no-untyped-def]
    from knowledge.embeddings import SentenceTransformerEmbedder

    class Counting(SentenceTransformerEmbedder):
        calls = 0

        def embed(self, texts):  # type: ignore[no-untyped-def]
            Counting.calls += 1
            return super().embed(texts)

    kb = await KnowledgeBase.open(settings, embedder=Counting("all-MiniLM-L6-v2"))
    try:
        await kb.ingest(["handbook"], "hr")
        calls = Counting.calls
        assert calls > 0
        await kb.ingest(["handbook"], "hr")
        assert Counting.calls == calls
        assert kb.embedder._model is not None  # type: ignore[attr-defined]
    finally:
        await kb.close()


async def test_acl_change_reindexes_an_unchanged_file(kb: KnowledgeBase, docs: Path) -> None:
    await kb.ingest(["handbook/leave-policy.md"], "hr")
    hits = await kb.search("parental leave weeks", ["hr"], limit=1)
    assert hits and "16 weeks" in hits[0].text
    report = await kb.ingest(["handbook/leave-policy.md"], "hr", ["hr-team"])
    assert report.updated == ["handbook/leave-policy.md"]
    assert await kb.search("parental leave weeks", ["hr"], limit=5) == []
    assert await kb.search("parental leave weeks", ["hr"], ["hr-team"], limit=1)


async def test_bad_files_are_reported_and_the_rest_ingests(kb: KnowledgeBase, docs: Path) -> None:
    (docs / "broken.pdf").write_bytes(b"%PDF-1.4 this is not really a pdf")
    (docs / "empty.md").write_text("")
    (docs / "photo.png").write_bytes(b"\x89PNG\r\n")
    report = await kb.ingest(["handbook", "missing.md"], "hr")
    failed = dict(report.failed)
    assert set(failed) == {"handbook/broken.pdf", "missing.md"}
    assert "no such file" in failed["missing.md"]
    # Read, but nothing to index (empty, or only a table of contents): skipped, not failed.
    assert sorted(report.skipped) == [
        ("handbook/empty.md", "no text"),
        ("handbook/photo.png", "unsupported file type"),
    ]
    assert len(report.added) == 4

    # A file that later fails keeps its last good version searchable.
    (docs / "leave-policy.md").write_bytes(bytes(range(256)) * 4)
    again = await kb.ingest(["handbook"], "hr")
    assert "handbook/leave-policy.md" in dict(again.failed)
    hits = await kb.search("parental leave weeks", ["hr"], limit=3)
    assert any("16 weeks" in h.text for h in hits)


async def test_a_document_emptied_is_skipped_and_leaves_the_index(kb: KnowledgeBase, docs: Path) -> None:
    await kb.ingest(["handbook"], "hr")
    assert any("16 weeks" in h.text for h in await kb.search("parental leave weeks", ["hr"], limit=3))
    (docs / "leave-policy.md").write_text("<!-- moved to the wiki -->\n")
    report = await kb.ingest(["handbook"], "hr")
    assert report.failed == [] and ("handbook/leave-policy.md", "no text") in report.skipped
    assert report.deleted == ["handbook/leave-policy.md"]
    assert not any("16 weeks" in h.text for h in await kb.search("parental leave weeks", ["hr"], limit=5))


async def test_unknown_collection_is_a_clear_error(kb: KnowledgeBase, docs: Path) -> None:
    await kb.ingest(["handbook/expenses.md"], "hr")
    with pytest.raises(UnknownCollectionError, match=r"'finance' does not exist\. Known collections: hr"):
        await kb.search("receipts", ["finance"])


async def test_chunk_ids_are_stable_across_rebuilds(settings, embedder, docs: Path) -> None:  # type: ignore[no-untyped-def]
    ids = []
    for _ in range(2):
        shutil.rmtree(settings.data_dir, ignore_errors=True)
        kb = await KnowledgeBase.open(settings, embedder=embedder)
        try:
            await kb.ingest(["handbook"], "hr")
            async with kb.db.session() as s:
                ids.append(set(await s.scalars(select(Chunk.id))))
        finally:
            await kb.close()
    assert ids[0] == ids[1] and len(ids[0]) > 4
