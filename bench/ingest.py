"""Ingestion throughput on the Python 3.11 documentation (~500 reStructuredText sources).

Measured side by side in one run, model already loaded for both:
  1. kbot's end-to-end ingest (discover, hash, load, chunk, embed, upsert into Qdrant Edge,
     SQL bookkeeping, HNSW build) — chunks per second;
  2. bare ``SentenceTransformer.encode`` of exactly the same chunk texts — chunks per second;
  3. re-ingesting the unchanged corpus.
Goals: (1)/(2) ≥ 0.8; (1) time / (3) time ≥ 20.

    python bench/ingest.py [--limit N] [--corpus DIR]
Needs: apt-get install python3.11-doc
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kbot.settings import Settings
from knowledge.base import KnowledgeBase
from knowledge.chunking import Chunker
from knowledge.embeddings import SentenceTransformerEmbedder
from knowledge.loaders import load_document

DEFAULT_CORPUS = Path("/usr/share/doc/python3.11/html/_sources")


async def main(args: argparse.Namespace) -> None:
    if not args.corpus.is_dir():
        sys.exit(f"{args.corpus} is missing: install it with `apt-get install python3.11-doc`.")
    files = sorted(args.corpus.rglob("*.rst.txt"))[: args.limit or None]
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        for f in files:  # a private copy, so the bench ingests exactly these files
            target = corpus / f.relative_to(args.corpus)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(f.read_bytes())
        settings = Settings(data_dir=Path(tmp) / "state")
        embedder = SentenceTransformerEmbedder(
            settings.embedding_model, batch_size=settings.embedding_batch_size
        )
        embedder.embed(["warm up"])
        kb = await KnowledgeBase.open(settings, embedder=embedder)

        t0 = time.perf_counter()
        first = await kb.ingest([str(corpus)], "pydocs", progress=True)
        t_ingest = time.perf_counter() - t0

        t0 = time.perf_counter()
        again = await kb.ingest([str(corpus)], "pydocs")
        t_reingest = time.perf_counter() - t0
        await kb.close()

        # The same chunk texts, produced again outside the timed region.
        chunker = Chunker(embedder.tokenizer(), settings.chunk_tokens, settings.chunk_overlap_tokens)
        texts = [
            d.embed_text
            for f in sorted(corpus.rglob("*.rst.txt"))
            if str(f) not in dict(first.failed)
            for d in chunker.chunk(load_document(f))
        ]
        t0 = time.perf_counter()
        embedder._load().encode(texts, batch_size=settings.embedding_batch_size, normalize_embeddings=True)
        t_raw = time.perf_counter() - t0

    n = first.chunks
    kbot_rate, raw_rate = n / t_ingest, len(texts) / t_raw
    print(f"files: {len(files)} ({len(first.failed)} failed), chunks: {n} (raw run: {len(texts)})")
    print(f"kbot ingest: {t_ingest:.1f} s = {kbot_rate:.1f} chunks/s")
    print(f"bare encode: {t_raw:.1f} s = {raw_rate:.1f} chunks/s")
    print(f"re-ingest unchanged: {t_reingest:.2f} s ({len(again.unchanged)} unchanged)")
    print(
        f"RESULT ingest_vs_encode={kbot_rate / raw_rate:.3f} reingest_speedup={t_ingest / t_reingest:.1f} "
        f"chunks={n} chunks_per_s={kbot_rate:.1f}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--limit", type=int, default=0, help="Only the first N files (0 = all).")
    asyncio.run(main(parser.parse_args()))
