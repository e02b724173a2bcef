"""One contract, every vector store: Qdrant Edge and qdrant-client (its :memory: local mode
stands in for a Qdrant server, through the same client API)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from knowledge.sparse import document_vector, query_vector
from knowledge.vectorstore import ChunkRecord, SearchQuery, VectorStore
from knowledge.vectorstore.edge import EdgeVectorStore
from knowledge.vectorstore.server import QdrantServerStore
from knowledge.vectorstore.shared import ShardHost, SharedShardStore, socket_path

DIM = 8


@pytest.fixture(params=["edge", "qdrant-client", "shared-edge"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[VectorStore]:
    s: VectorStore
    host: ShardHost | None = None
    owned = EdgeVectorStore(tmp_path / "shard")
    if request.param == "edge":
        s = owned
    elif request.param == "shared-edge":  # a command's view of the shard a running server owns
        host = ShardHost(tmp_path)
        await host.start(owned)
        s = SharedShardStore(socket_path(tmp_path))
    else:
        s = QdrantServerStore(":memory:", collection="kbot")
    await s.prepare(DIM)
    yield s
    await s.close()
    if host is not None:
        await host.close()
        await owned.close()


def vec(i: int) -> np.ndarray:
    v = np.zeros(DIM, dtype=np.float32)
    v[i % DIM] = 1.0
    v[(i + 1) % DIM] = 0.1
    return v / np.linalg.norm(v)


def record(
    i: int, text: str, *, collection: str = "hr", source: str = "a.md", acl: list[str] | None = None
) -> ChunkRecord:
    return ChunkRecord(
        id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{collection}/{source}/{i}")),
        dense=vec(i),
        sparse=document_vector(text),
        payload={
            "collection": collection,
            "source": source,
            "title": f"title {source}",
            "heading": "H",
            "text": text,
            "acl": acl or ["*"],
            "ordinal": i,
        },
    )


async def test_dense_search_ranks_the_nearest_first(store: VectorStore) -> None:
    await store.upsert([record(i, f"text {i}") for i in range(6)])
    hits = await store.search(SearchQuery(["hr"], [], limit=3, dense=vec(2).tolist()))
    assert hits[0].text == "text 2"
    assert hits[0].source == "a.md" and hits[0].title == "title a.md" and hits[0].collection == "hr"
    assert len(hits) == 3


async def test_sparse_search_finds_keywords(store: VectorStore) -> None:
    await store.upsert([record(0, "annual leave days"), record(1, "expense receipts"), record(2, "請假規定")])
    hits = await store.search(SearchQuery(["hr"], [], limit=2, sparse=query_vector("receipts")))
    assert [h.text for h in hits] == ["expense receipts"]
    hits = await store.search(SearchQuery(["hr"], [], limit=2, sparse=query_vector("規定")))
    assert [h.text for h in hits] == ["請假規定"]


async def test_hybrid_fuses_both_rankings(store: VectorStore) -> None:
    # Point 0 is nearest in dense space; point 3 is the only keyword match: RRF returns both on top.
    await store.upsert([record(i, f"filler {i}") for i in range(3)] + [record(3, "unique keyword zebra")])
    hits = await store.search(
        SearchQuery(["hr"], [], limit=2, dense=vec(0).tolist(), sparse=query_vector("zebra"))
    )
    assert {h.text for h in hits} == {"filler 0", "unique keyword zebra"}
    assert hits[0].score > 0


async def test_collections_are_isolated(store: VectorStore) -> None:
    await store.upsert([record(0, "hr doc", collection="hr"), record(0, "eng doc", collection="eng")])
    hits = await store.search(SearchQuery(["eng"], [], limit=5, dense=vec(0).tolist()))
    assert [h.text for h in hits] == ["eng doc"]
    hits = await store.search(SearchQuery(["eng", "hr"], [], limit=5, dense=vec(0).tolist()))
    assert {h.text for h in hits} == {"eng doc", "hr doc"}
    assert await store.count("hr") == 1


async def test_acl_hides_restricted_chunks(store: VectorStore) -> None:
    await store.upsert([record(0, "public"), record(1, "secret CANARY-7731", source="s.md", acl=["hr-team"])])
    for groups in ([], ["eng"]):
        for q in (
            SearchQuery(["hr"], groups, limit=10, dense=vec(1).tolist()),
            SearchQuery(["hr"], groups, limit=10, sparse=query_vector("CANARY-7731 secret")),
            SearchQuery(["hr"], groups, limit=10, dense=vec(1).tolist(), sparse=query_vector("secret")),
        ):
            assert all("CANARY" not in h.text for h in await store.search(q))
    hits = await store.search(SearchQuery(["hr"], ["hr-team"], limit=10, sparse=query_vector("secret")))
    assert [h.text for h in hits] == ["secret CANARY-7731"]
    # Hits say who may see them: the answer log marks answers that used restricted text.
    assert hits[0].acl == ("hr-team",) and hits[0].restricted
    public = await store.search(SearchQuery(["hr"], [], limit=10, dense=vec(0).tolist()))
    assert [(h.acl, h.restricted) for h in public] == [(("*",), False)]


async def test_delete_document_keeps_listed_ids(store: VectorStore) -> None:
    recs = [record(i, f"t{i}") for i in range(4)] + [record(9, "other", source="b.md")]
    await store.upsert(recs)
    await store.delete_document("hr", "a.md", keep=[recs[1].id])
    hits = await store.search(SearchQuery(["hr"], [], limit=10, dense=vec(0).tolist()))
    assert {h.text for h in hits} == {"t1", "other"}
    await store.delete_document("hr", "a.md")
    assert await store.count("hr") == 1


async def test_upsert_replaces_by_id(store: VectorStore) -> None:
    await store.upsert([record(0, "old text")])
    await store.upsert([record(0, "new text")])
    hits = await store.search(SearchQuery(["hr"], [], limit=5, dense=vec(0).tolist()))
    assert [h.text for h in hits] == ["new text"]


async def test_delete_collection_and_optimize(store: VectorStore) -> None:
    await store.upsert([record(i, f"t{i}") for i in range(5)] + [record(0, "x", collection="eng")])
    await store.optimize()
    await store.delete_collection("hr")
    assert await store.count("hr") == 0
    assert await store.count("eng") == 1


async def test_dimension_mismatch_is_refused(tmp_path: Path) -> None:
    from kbot.errors import VectorStoreError

    first = EdgeVectorStore(tmp_path / "shard")
    await first.prepare(DIM)
    await first.upsert([record(0, "x")])
    await first.close()
    second = EdgeVectorStore(tmp_path / "shard")
    with pytest.raises(VectorStoreError, match="16-dimensional"):
        await second.prepare(16)


async def test_dense_weight_shifts_the_fusion(store: VectorStore) -> None:
    # Point 0 is the dense favourite, point 5 the only keyword match; both rank once.
    await store.upsert([record(i, f"filler {i}") for i in range(5)] + [record(5, "zebra")])
    dense, words = vec(0).tolist(), query_vector("zebra")
    even = await store.search(
        SearchQuery(["hr"], [], limit=1, dense=dense, sparse=words, prefetch=1, dense_weight=2.0)
    )
    low = await store.search(
        SearchQuery(["hr"], [], limit=1, dense=dense, sparse=words, prefetch=1, dense_weight=0.1)
    )
    assert [even[0].text, low[0].text] == ["filler 0", "zebra"]


async def test_a_shard_open_elsewhere_is_a_clear_error(tmp_path: Path) -> None:
    from kbot.errors import VectorStoreError

    first = EdgeVectorStore(tmp_path / "shard")
    await first.prepare(DIM)
    await first.upsert([record(0, "x")])
    second = EdgeVectorStore(tmp_path / "shard")
    with pytest.raises(VectorStoreError, match="another kbot process has it open"):
        await second.prepare(DIM)
    await first.close()
    await second.prepare(DIM)  # free again once the first has closed it
    assert await second.count("hr") == 1
    await second.close()
