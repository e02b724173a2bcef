"""Search latency at 100k chunks: kbot's hybrid, filtered search vs qdrant-client local mode.

Both hold the same synthetic data (384-d unit vectors, BM25 sparse vectors over a Zipf
vocabulary, 10 collections, a third of the chunks restricted to a group) and answer the same
queries: dense + sparse prefetch, RRF fusion, filtered by collection and ACL, top 5.
kbot's path includes building the sparse query from text; the dense query vector is given to
both (embedding it costs the same either way). Goal: kbot ≥ 20× faster at p50.
Local mode scans in Python (~5 s a query at 100k), so it answers only the first
--baseline-queries of the queries, interleaved with kbot's.

    python bench/search.py [--points N] [--queries Q] [--baseline-queries B]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qdrant_client import models as m

from knowledge import sparse
from knowledge.vectorstore import RRF_K, ChunkRecord, SearchQuery
from knowledge.vectorstore.edge import EdgeVectorStore
from knowledge.vectorstore.server import QdrantServerStore

DIM = 384


def corpus(n: int, rng: np.random.Generator) -> tuple[np.ndarray, list[str], list[str]]:
    vocab = [f"term{i}" for i in range(30_000)]
    weights = 1.0 / np.arange(1, len(vocab) + 1)
    weights /= weights.sum()
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    words = rng.choice(len(vocab), size=(n, 60), p=weights)
    texts = [" ".join(vocab[w] for w in row) for row in words]
    queries = [" ".join(vocab[w] for w in rng.choice(len(vocab), size=6, p=weights)) for _ in range(1000)]
    return vectors, texts, queries


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] * 1000


async def main(args: argparse.Namespace) -> None:
    warnings.filterwarnings("ignore", message="Local mode is not recommended")
    rng = np.random.default_rng(7)
    vectors, texts, queries = corpus(args.points, rng)
    records = [
        ChunkRecord(
            id=str(uuid.UUID(int=i + 1)),
            dense=vectors[i],
            sparse=sparse.document_vector(texts[i]),
            payload={
                "collection": f"c{i % 10}",
                "source": f"doc{i // 20}.md",
                "title": f"Doc {i // 20}",
                "heading": "",
                "text": texts[i],
                "acl": ["hr"] if i % 3 == 0 else ["*"],
                "ordinal": i % 20,
            },
        )
        for i in range(args.points)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        edge = EdgeVectorStore(Path(tmp) / "shard")
        await edge.prepare(DIM)
        local = QdrantServerStore(":memory:", collection="bench")
        await local.prepare(DIM)
        t0 = time.perf_counter()
        for i in range(0, len(records), 2000):
            await edge.upsert(records[i : i + 2000])
        await edge.optimize()
        print(f"edge: loaded and indexed {args.points} points in {time.perf_counter() - t0:.1f} s")
        t0 = time.perf_counter()
        for i in range(0, len(records), 2000):
            await local.upsert(records[i : i + 2000])
        print(f"qdrant-client local: loaded {args.points} points in {time.perf_counter() - t0:.1f} s")
        client = local._client  # the bare client, so the baseline carries none of kbot's code

        qvecs = rng.standard_normal((args.queries, DIM)).astype(np.float32)
        qvecs /= np.linalg.norm(qvecs, axis=1, keepdims=True)
        kbot_ms: list[float] = []
        local_ms: list[float] = []
        overlap = []
        for i in range(args.queries):
            dense = qvecs[i].tolist()
            collection = f"c{i % 10}"
            t0 = time.perf_counter()
            query = SearchQuery(
                [collection], [], limit=5, dense=dense, sparse=sparse.query_vector(queries[i])
            )
            hits = await edge.search(query)
            kbot_ms.append(time.perf_counter() - t0)
            if i >= args.baseline_queries:
                continue

            sq = sparse.query_vector(queries[i])
            flt = m.Filter(
                must=[
                    m.FieldCondition(key="collection", match=m.MatchAny(any=[collection])),
                    m.FieldCondition(key="acl", match=m.MatchAny(any=["*"])),
                ]
            )
            t0 = time.perf_counter()
            result = await client.query_points(
                "bench",
                prefetch=[
                    m.Prefetch(query=dense, using="dense", filter=flt, limit=40),
                    m.Prefetch(
                        query=m.SparseVector(indices=sq.indices, values=sq.values),
                        using="sparse",
                        filter=flt,
                        limit=40,
                    ),
                ],
                query=m.RrfQuery(rrf=m.Rrf(k=RRF_K)),
                limit=5,
            )
            local_ms.append(time.perf_counter() - t0)
            overlap.append(len({h.chunk_id for h in hits} & {str(p.id) for p in result.points}) / 5)
        await edge.close()
        await local.close()

    k50, k95 = percentile(kbot_ms, 50), percentile(kbot_ms, 95)
    l50, l95 = percentile(local_ms, 50), percentile(local_ms, 95)
    print(f"kbot (Qdrant Edge, hybrid + filter): p50 {k50:.2f} ms, p95 {k95:.2f} ms")
    print(f"qdrant-client local mode, same query: p50 {l50:.2f} ms, p95 {l95:.2f} ms")
    print(f"top-5 agreement with the exact local-mode result: {statistics.mean(overlap):.2f}")
    print(
        f"RESULT speedup_p50={l50 / k50:.1f} speedup_p95={l95 / k95:.1f} kbot_p50_ms={k50:.2f} "
        f"kbot_p95_ms={k95:.2f} local_p50_ms={l50:.2f} points={args.points}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--baseline-queries", type=int, default=30)
    asyncio.run(main(parser.parse_args()))
