"""Qdrant Edge: the Qdrant engine in-process, storing a shard under ``KBOT_DATA_DIR/qdrant``.

Edge has no background threads, so :meth:`optimize` must be called after bulk writes to build
the HNSW index (ingestion does). One process at a time may open a shard; several processes
sharing data need a Qdrant server (``KBOT_QDRANT_URL``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import qdrant_edge as qe

from kbot.errors import VectorStoreError
from knowledge.vectorstore import (
    DENSE,
    RETURNED_FIELDS,
    RRF_K,
    SPARSE,
    ChunkRecord,
    Hit,
    SearchQuery,
    hit_from_payload,
)


class EdgeVectorStore:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._shard: qe.EdgeShard | None = None
        self._writes = asyncio.Lock()  # held by each write, and while the shard is frozen for a copy

    async def prepare(self, dimension: int) -> None:
        if self._shard is not None:
            return
        config = qe.EdgeConfig(
            vectors={DENSE: qe.EdgeVectorParams(size=dimension, distance=qe.Distance.Cosine)},
            sparse_vectors={SPARSE: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)},
        )
        exists = self._path.is_dir() and any(self._path.iterdir())
        hint = (
            f"Cannot open the Qdrant Edge shard at {self._path} for {dimension}-dimensional vectors. "
            "If the embedding model changed, use a new KBOT_QDRANT_COLLECTION or data dir; if another "
            "kbot process has it open, stop it or use a Qdrant server (KBOT_QDRANT_URL)"
        )
        with _engine_errors(hint):
            if exists:
                self._shard = qe.EdgeShard.load(str(self._path), config)
            else:
                self._path.mkdir(parents=True, exist_ok=True)
                shard = qe.EdgeShard.create(str(self._path), config)
                shard.update(
                    qe.UpdateOperation.create_field_index("collection", qe.KeywordIndexParams(is_tenant=True))
                )
                shard.update(qe.UpdateOperation.create_field_index("acl", qe.PayloadSchemaType.Keyword))
                shard.update(qe.UpdateOperation.create_field_index("source", qe.PayloadSchemaType.Keyword))
                self._shard = shard

    @property
    def shard(self) -> qe.EdgeShard:
        if self._shard is None:
            raise VectorStoreError("The vector store was used before prepare().")
        return self._shard

    async def upsert(self, records: Sequence[ChunkRecord]) -> None:
        points = [
            qe.Point(
                r.id,
                {DENSE: r.dense.tolist(), SPARSE: qe.SparseVector(r.sparse.indices, r.sparse.values)},
                dict(r.payload),
            )
            for r in records
        ]
        await self._write(qe.UpdateOperation.upsert_points(points))

    async def delete_document(self, collection: str, source: str, keep: Sequence[str] = ()) -> None:
        must_not: list[Any] = [qe.HasIdCondition(set(keep))] if keep else []
        flt = qe.Filter(
            must=[
                qe.FieldCondition("collection", match=qe.MatchValue(collection)),
                qe.FieldCondition("source", match=qe.MatchValue(source)),
            ],
            must_not=must_not or None,
        )
        await self._write(qe.UpdateOperation.delete_points_by_filter(flt))

    async def delete_collection(self, collection: str) -> None:
        flt = qe.Filter(must=[qe.FieldCondition("collection", match=qe.MatchValue(collection))])
        await self._write(qe.UpdateOperation.delete_points_by_filter(flt))

    async def search(self, query: SearchQuery) -> list[Hit]:
        flt = qe.Filter(
            must=[
                qe.FieldCondition("collection", match=qe.MatchAny(list(query.collections))),
                qe.FieldCondition("acl", match=qe.MatchAny(query.allowed)),
            ]
        )
        stages = []
        if query.dense is not None:
            stages.append(qe.Query.Nearest(list(query.dense), using=DENSE))
        if query.sparse is not None:
            sparse = qe.SparseVector(query.sparse.indices, query.sparse.values)
            stages.append(qe.Query.Nearest(sparse, using=SPARSE))
        if len(stages) == 1:
            request = qe.QueryRequest(
                limit=query.limit, query=stages[0], filter=flt, with_payload=RETURNED_FIELDS
            )
        else:
            request = qe.QueryRequest(
                limit=query.limit,
                prefetches=[qe.Prefetch(limit=query.prefetch, query=s, filter=flt) for s in stages],
                query=qe.Fusion.Rrf(k=RRF_K, weights=[query.dense_weight, 1.0]),  # type: ignore[arg-type]
                with_payload=RETURNED_FIELDS,
            )
        # Called inline, not in a thread: a filtered HNSW query takes well under a millisecond,
        # less than a thread hop costs.
        with _engine_errors("Qdrant Edge search failed"):
            points = self.shard.query(request)
        return [hit_from_payload(p.id, p.score, p.payload) for p in points]

    async def count(self, collection: str) -> int:
        flt = qe.Filter(must=[qe.FieldCondition("collection", match=qe.MatchValue(collection))])
        with _engine_errors("Qdrant Edge count failed"):
            return int(self.shard.count(qe.CountRequest(filter=flt, exact=True)))

    async def optimize(self) -> None:
        shard = self.shard
        async with self._writes:
            with _engine_errors(f"Optimizing the Qdrant Edge shard at {self._path} failed"):
                await asyncio.to_thread(shard.optimize)

    async def load(self) -> None:
        """Open the shard as it is on disk, whatever its vectors' size; none there: nothing."""
        if self._shard is None and (self._path / "edge_config.json").is_file():
            with _engine_errors(f"Cannot open the Qdrant Edge shard at {self._path}"):
                self._shard = qe.EdgeShard.load(str(self._path))  # no config: it would be rewritten

    @asynccontextmanager
    async def frozen(self) -> AsyncIterator[Path | None]:
        """Flushed, with writes held back until exit: its folder can be copied as it is (searches
        go on). Yields the folder, or None when no shard was ever created."""
        async with self._writes:
            if self._shard is None:
                await self.load()
            if self._shard is None:
                yield None
                return
            shard = self._shard
            with _engine_errors(f"Flushing the Qdrant Edge shard at {self._path} failed"):
                await asyncio.to_thread(shard.flush)
            yield self._path

    async def close(self) -> None:
        if self._shard is not None:
            shard, self._shard = self._shard, None
            await asyncio.to_thread(_flush_and_close, shard)

    async def _write(self, operation: qe.UpdateOperation) -> None:
        shard = self.shard
        async with self._writes:
            with _engine_errors(f"Writing to the Qdrant Edge shard at {self._path} failed"):
                await asyncio.to_thread(shard.update, operation)

    async def delete_points(self, ids: Sequence[str]) -> None:
        if ids:
            await self._write(qe.UpdateOperation.delete_points(list(ids)))

    async def points(self) -> dict[str, str]:
        """Every point's id and collection (a backup's check of its copy against the catalog)."""
        shard, offset = self.shard, None
        found: dict[str, str] = {}
        while True:
            request = qe.ScrollRequest(offset=offset, limit=1000, with_payload=["collection"])
            with _engine_errors(f"Reading the Qdrant Edge shard at {self._path} failed"):
                records, offset = await asyncio.to_thread(shard.scroll, request)
            found |= {str(r.id): str((r.payload or {}).get("collection", "")) for r in records}
            if offset is None:
                return found


@contextmanager
def _engine_errors(message: str) -> Iterator[None]:
    """Turn the engine's errors into :class:`VectorStoreError`.

    qdrant-edge raises a bare ``Exception`` for every engine error, so nothing narrower can be
    caught here.
    """
    try:
        yield
    except Exception as exc:
        raise VectorStoreError(f"{message}: {exc}") from exc


def _flush_and_close(shard: qe.EdgeShard) -> None:
    shard.flush()
    shard.close()
