"""The knowledge base as one object: built from settings, used by the CLI, the agent and the server."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence

from kbot.db import Database
from kbot.settings import Settings
from knowledge import sparse
from knowledge.catalog import Catalog, CollectionStats, check_collection_name, check_groups
from knowledge.embeddings import Embedder, SentenceTransformerEmbedder
from knowledge.ingest import Ingestor, IngestReport
from knowledge.vectorstore import Hit, SearchQuery, VectorStore

# Below this share of query tokens known to the embedding model, the dense ranking is demoted.
MIN_DENSE_COVERAGE = 0.5
# Qdrant's weighted RRF divides a ranking's ranks by its weight: at 1e-4 the dense ranking
# cannot reorder keyword matches (adjacent RRF terms differ by ~1/(k+40)^2), only follow them.
DENSE_FILL_WEIGHT = 1e-4


def open_vector_store(settings: Settings, *, owner: bool = False) -> VectorStore:
    """A Qdrant server when ``qdrant_url`` is set; else the Qdrant Edge shard in ``data_dir``.

    The shard is opened here unless a ``kbot serve`` owns it: then its work goes to that server
    (:mod:`knowledge.vectorstore.shared`). ``owner`` (the server itself) always opens it.
    """
    if settings.qdrant_url:
        from knowledge.vectorstore.server import QdrantServerStore

        key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
        return QdrantServerStore(settings.qdrant_url, collection=settings.qdrant_collection, api_key=key)
    from knowledge.vectorstore.edge import EdgeVectorStore
    from knowledge.vectorstore.shared import SharedShardStore, server_listening, socket_path

    control = socket_path(settings.data_dir)
    if not owner and server_listening(control):
        return SharedShardStore(control)
    return EdgeVectorStore(settings.edge_path / settings.qdrant_collection)


class KnowledgeBase:
    def __init__(self, settings: Settings, db: Database, store: VectorStore, embedder: Embedder) -> None:
        self.settings = settings
        self.db = db
        self.catalog = Catalog(db)
        self.store = store
        self.embedder = embedder
        self.ingestor = Ingestor(
            self.catalog,
            store,
            embedder,
            chunk_tokens=settings.chunk_tokens,
            overlap_tokens=settings.chunk_overlap_tokens,
        )

    @classmethod
    async def open(
        cls, settings: Settings, *, embedder: Embedder | None = None, owner: bool = False
    ) -> KnowledgeBase:
        db = Database(settings.sql_url)
        await db.migrate()
        embedder = embedder or SentenceTransformerEmbedder(
            settings.embedding_model,
            device=settings.embedding_device,
            batch_size=settings.embedding_batch_size,
        )
        return cls(settings, db, open_vector_store(settings, owner=owner), embedder)

    async def ingest(
        self,
        paths: Sequence[str],
        collection: str,
        acl: Sequence[str] = (),
        *,
        progress: bool = False,
        follow_symlinks: bool = False,
    ) -> IngestReport:
        """Sync ``paths`` into ``collection``; links inside a folder are followed only if asked."""
        return await self.ingestor.run(
            paths, collection, acl, progress=progress, follow_symlinks=follow_symlinks
        )

    async def delete(self, paths: Sequence[str], collection: str) -> dict[str, list[str]]:
        """Remove the documents at ``paths`` (files, or every document under a folder) from
        ``collection``: vectors (dense and sparse), then catalog rows. Per path: what went."""
        await self.catalog.require([collection])
        await self.store.prepare(self.embedder.dimension)
        stored = await self.catalog.documents(collection)
        gone: dict[str, list[str]] = {}
        for path in paths:
            wanted = os.path.normpath(path)
            folder = wanted.rstrip("/") + "/"
            matched = sorted(src for src in stored if src in (wanted, path) or src.startswith(folder))
            for source in matched:
                await self.ingestor.remove(collection, source, stored.pop(source).id)
            gone[path] = matched
        return gone

    async def delete_collection(self, name: str) -> CollectionStats:
        """Remove ``name`` and all it holds; what it held."""
        await self.catalog.require([name])
        [stats] = [c for c in await self.catalog.stats() if c.name == name]
        await self.store.prepare(self.embedder.dimension)
        await self.store.delete_collection(name)
        await self.catalog.delete_collection(name)
        return stats

    async def search(
        self,
        text: str,
        collections: Sequence[str],
        groups: Sequence[str] = (),
        *,
        limit: int = 5,
        mode: str = "hybrid",
    ) -> list[Hit]:
        """Top chunks for ``text`` in ``collections`` that ``groups`` may see.

        ``mode`` is ``hybrid`` (dense + sparse, RRF-fused), ``dense`` or ``sparse``.
        """
        if mode not in ("hybrid", "dense", "sparse"):
            raise ValueError(f"unknown search mode {mode!r}")
        for name in collections:
            check_collection_name(name)
        await self.catalog.require(collections)
        groups = check_groups(groups)
        await self.store.prepare(self.embedder.dimension)

        sparse_query = sparse.query_vector(text) if mode != "dense" else None
        if sparse_query is not None and not sparse_query.indices:
            sparse_query = None  # only stop words: keyword search has nothing to go on
        if mode == "sparse" and sparse_query is None:
            return []
        dense_query = None
        if mode != "sparse":
            dense_query = (await asyncio.to_thread(self.embedder.embed, [text]))[0].tolist()
        coverage = self.embedder.coverage(text) if dense_query and sparse_query else 1.0
        hits = await self.store.search(
            SearchQuery(
                collections=list(collections),
                groups=groups,
                limit=limit,
                dense=dense_query,
                sparse=sparse_query,
                prefetch=max(self.settings.search_prefetch, limit),
                # A model that reads little of the query (MiniLM on Chinese: mostly [UNK]) ranks
                # by noise, and under RRF a noisy ranking that lists everything outvotes an exact
                # keyword match. Then the dense ranking only fills places keywords leave empty.
                dense_weight=coverage if coverage >= MIN_DENSE_COVERAGE else DENSE_FILL_WEIGHT,
            )
        )
        # Fused scores tie often; the same question must see its passages in the same order.
        return sorted(hits, key=lambda h: (-h.score, h.chunk_id))

    async def warm_up(self) -> None:
        """Load the embedding model and its tokenizer now rather than inside the first search."""

        def load() -> None:
            self.embedder.embed(["warm up"])
            self.embedder.coverage("warm up")

        await asyncio.to_thread(load)

    async def collections(self) -> list[CollectionStats]:
        return await self.catalog.stats()

    async def close(self) -> None:
        await self.store.close()
        await self.db.close()
