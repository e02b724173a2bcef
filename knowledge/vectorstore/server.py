"""A Qdrant server (or cluster) through ``qdrant-client``; ``:memory:`` selects its local mode."""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import TypeVar

from qdrant_client import AsyncQdrantClient
from qdrant_client import models as m
from qdrant_client.http.exceptions import ApiException

from kbot.errors import VectorStoreError
from kbot.urls import shown_url
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

T = TypeVar("T")
# Connection failures surface as these (httpx transport errors, gRPC errors, timeouts).
_FAILURES = (ApiException, OSError, TimeoutError, ConnectionError, ValueError, RuntimeError)


class QdrantServerStore:
    def __init__(self, url: str, *, collection: str, api_key: str | None = None, timeout: int = 10) -> None:
        self._url = shown_url(url)  # for messages: credentials in the URL masked
        self._name = collection
        if url == ":memory:":
            self._client = AsyncQdrantClient(location=":memory:")
        else:
            # No version probe at construction: it runs in the background and only warns, noisily,
            # when the server is down (`kbot doctor` reports that plainly instead).
            self._client = AsyncQdrantClient(
                url=url, api_key=api_key, timeout=timeout, check_compatibility=False
            )
        self._ready = False

    async def prepare(self, dimension: int) -> None:
        if self._ready:
            return
        try:
            if await self._client.collection_exists(self._name):
                info = await self._client.get_collection(self._name)
                vectors = info.config.params.vectors
                size = vectors[DENSE].size if isinstance(vectors, dict) and DENSE in vectors else None
                if size != dimension:
                    raise VectorStoreError(
                        f"Qdrant collection {self._name!r} at {self._url} holds {size}-dimensional vectors, "
                        f"but the embedding model makes {dimension}. Use another KBOT_QDRANT_COLLECTION."
                    )
            else:
                await self._client.create_collection(
                    self._name,
                    vectors_config={DENSE: m.VectorParams(size=dimension, distance=m.Distance.COSINE)},
                    sparse_vectors_config={SPARSE: m.SparseVectorParams(modifier=m.Modifier.IDF)},
                )
                if self._url != ":memory:":  # local mode ignores payload indexes (and warns)
                    await self._create_indexes()
        except _FAILURES as exc:
            raise VectorStoreError(
                f"Cannot prepare Qdrant collection {self._name!r} at {self._url}: {exc}"
            ) from exc
        self._ready = True

    async def _create_indexes(self) -> None:
        await self._client.create_payload_index(
            self._name, "collection", m.KeywordIndexParams(type=m.KeywordIndexType.KEYWORD, is_tenant=True)
        )
        for field in ("acl", "source"):
            await self._client.create_payload_index(self._name, field, m.PayloadSchemaType.KEYWORD)

    async def upsert(self, records: Sequence[ChunkRecord]) -> None:
        points = [
            m.PointStruct(
                id=r.id,
                vector={
                    DENSE: r.dense.tolist(),
                    SPARSE: m.SparseVector(indices=r.sparse.indices, values=r.sparse.values),
                },
                payload=dict(r.payload),
            )
            for r in records
        ]
        await self._call("upsert", self._client.upsert(self._name, points, wait=True))

    async def delete_document(self, collection: str, source: str, keep: Sequence[str] = ()) -> None:
        flt = m.Filter(
            must=[_match("collection", collection), _match("source", source)],
            must_not=[m.HasIdCondition(has_id=list(keep))] if keep else None,
        )
        await self._call("delete", self._client.delete(self._name, m.FilterSelector(filter=flt), wait=True))

    async def delete_collection(self, collection: str) -> None:
        flt = m.Filter(must=[_match("collection", collection)])
        await self._call("delete", self._client.delete(self._name, m.FilterSelector(filter=flt), wait=True))

    async def search(self, query: SearchQuery) -> list[Hit]:
        flt = m.Filter(
            must=[
                m.FieldCondition(key="collection", match=m.MatchAny(any=list(query.collections))),
                m.FieldCondition(key="acl", match=m.MatchAny(any=query.allowed)),
            ]
        )
        stages: list[tuple[list[float] | m.SparseVector, str]] = []
        if query.dense is not None:
            stages.append((list(query.dense), DENSE))
        if query.sparse is not None:
            stages.append((m.SparseVector(indices=query.sparse.indices, values=query.sparse.values), SPARSE))
        if len(stages) == 1:
            call = self._client.query_points(
                self._name,
                query=stages[0][0],
                using=stages[0][1],
                query_filter=flt,
                limit=query.limit,
                with_payload=RETURNED_FIELDS,
            )
        else:
            call = self._client.query_points(
                self._name,
                prefetch=[m.Prefetch(query=q, using=u, filter=flt, limit=query.prefetch) for q, u in stages],
                query=m.RrfQuery(rrf=m.Rrf(k=RRF_K, weights=[query.dense_weight, 1.0])),
                limit=query.limit,
                with_payload=RETURNED_FIELDS,
            )
        result = await self._call("search", call)
        return [hit_from_payload(p.id, p.score, p.payload) for p in result.points]

    async def count(self, collection: str) -> int:
        result = await self._call(
            "count",
            self._client.count(self._name, count_filter=m.Filter(must=[_match("collection", collection)])),
        )
        return int(result.count)

    async def optimize(self) -> None:
        """Nothing to do: the server indexes in the background."""

    async def close(self) -> None:
        await self._client.close()

    async def _call(self, what: str, awaitable: Awaitable[T]) -> T:
        try:
            return await awaitable
        except _FAILURES as exc:
            raise VectorStoreError(f"Qdrant {what} at {self._url} failed: {exc}") from exc


def _match(key: str, value: str) -> m.FieldCondition:
    return m.FieldCondition(key=key, match=m.MatchValue(value=value))
