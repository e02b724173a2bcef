"""The vector-store port: where chunk vectors live and how hybrid search runs.

Two real implementations share one contract (tests/test_vectorstore_contract.py):
:class:`~knowledge.vectorstore.edge.EdgeVectorStore` (Qdrant Edge, in-process, the default) and
:class:`~knowledge.vectorstore.server.QdrantServerStore` (``qdrant-client``: a Qdrant server by
URL, or its ``:memory:`` local mode).

Every kbot collection lives in one physical Qdrant collection, told apart by the ``collection``
payload field (indexed as the tenant key), the layout Qdrant recommends for many small tenants.
Every point carries ``acl``: the groups allowed to see it, or ``["*"]`` for everyone. Every search
filters on both, so a caller can never get a chunk outside its collections and groups.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypedDict

import numpy as np

from knowledge.sparse import SparseVector

PUBLIC = "*"
DENSE = "dense"
SPARSE = "sparse"
# Qdrant's RRF constant; 60 is the value from the original RRF paper and Qdrant's own docs.
RRF_K = 60
# Payload fields that searches and deletes filter on; each gets a payload index.
INDEXED_FIELDS = ("collection", "acl", "source")
# Payload fields a search returns (``acl`` and ``ordinal`` stay inside the store).
RETURNED_FIELDS = ["collection", "source", "title", "heading", "text", "acl"]


class ChunkPayload(TypedDict):
    collection: str
    source: str
    title: str
    heading: str
    text: str
    acl: list[str]
    ordinal: int


@dataclass(frozen=True)
class ChunkRecord:
    id: str
    dense: np.ndarray
    sparse: SparseVector
    payload: ChunkPayload


@dataclass(frozen=True)
class SearchQuery:
    """A search: at least one of ``dense`` and ``sparse``; both means RRF-fused hybrid search.

    ``dense_weight`` scales the dense ranking's share of the fusion (the sparse ranking weighs 1):
    lowered when the embedding model cannot read the query, so its arbitrary ranking cannot
    outvote an exact keyword match.
    """

    collections: Sequence[str]
    groups: Sequence[str]
    limit: int
    dense: Sequence[float] | None = None
    sparse: SparseVector | None = None
    prefetch: int = 40
    dense_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.dense is None and self.sparse is None:
            raise ValueError("a search needs a dense or a sparse query vector")
        if not self.collections:
            raise ValueError("a search needs at least one collection")

    @property
    def allowed(self) -> list[str]:
        return [PUBLIC, *self.groups]


@dataclass(frozen=True)
class Hit:
    chunk_id: str
    score: float
    collection: str
    source: str
    title: str
    heading: str
    text: str
    acl: tuple[str, ...] = ()  # the groups that may see it; PUBLIC for everyone

    @property
    def restricted(self) -> bool:
        """Not open to everyone (an unknown ACL counts as restricted)."""
        return PUBLIC not in self.acl


class VectorStore(Protocol):
    async def prepare(self, dimension: int) -> None:
        """Create the physical collection and its payload indexes if missing; check the dimension."""

    async def upsert(self, records: Sequence[ChunkRecord]) -> None: ...

    async def delete_document(self, collection: str, source: str, keep: Sequence[str] = ()) -> None:
        """Delete a document's chunks, except the ids in ``keep``."""

    async def delete_collection(self, collection: str) -> None: ...

    async def search(self, query: SearchQuery) -> list[Hit]: ...

    async def count(self, collection: str) -> int: ...

    async def optimize(self) -> None:
        """Build indexes for what was written (Qdrant Edge has no background optimizer)."""

    async def close(self) -> None: ...


def hit_from_payload(chunk_id: object, score: float, payload: dict[str, object] | None) -> Hit:
    p = payload or {}
    return Hit(
        chunk_id=str(chunk_id),
        score=float(score),
        collection=str(p.get("collection", "")),
        source=str(p.get("source", "")),
        title=str(p.get("title", "")),
        heading=str(p.get("heading", "")),
        text=str(p.get("text", "")),
        acl=tuple(str(g) for g in acl) if isinstance(acl := p.get("acl"), list) else (),
    )
