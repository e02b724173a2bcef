"""Incremental ingestion: bring a collection in line with files on disk.

For each file: unchanged content, ACL and chunking settings → skipped without loading the model;
new or changed → loaded, chunked, embedded and upserted, then the document's stale chunks are
deleted (upsert first, so a search never sees the document missing). Files that vanished from a
folder given on the command line are deleted from the collection. A file that fails to load is
reported and skipped; its previously ingested version, if any, stays searchable.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from kbot.errors import DocumentError, DocumentLoadError, UnsupportedFileError
from knowledge import sparse
from knowledge.catalog import Catalog, ChunkRow, StoredDocument, check_collection_name, check_groups
from knowledge.chunking import CHUNKER_VERSION, ChunkDraft, Chunker
from knowledge.embeddings import Embedder
from knowledge.loaders import is_supported, load_document
from knowledge.vectorstore import PUBLIC, ChunkPayload, ChunkRecord, VectorStore

log = logging.getLogger(__name__)
_CHUNK_NAMESPACE = uuid.UUID("6b626f74-0000-4000-8000-63686e6b0001")


@dataclass
class IngestReport:
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    chunks: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class _File:
    path: Path
    source: str
    content_hash: str


@dataclass(frozen=True)
class _Prepared:
    file: _File
    size: int
    title: str
    drafts: list[ChunkDraft]
    ids: list[str]
    is_new: bool


def chunk_id(collection: str, source: str, draft: ChunkDraft, occurrence: int) -> str:
    """Stable across re-ingests: an unchanged passage keeps its id even if others around it change."""
    key = "\x1f".join((collection, source, " > ".join(draft.heading_path), draft.text, str(occurrence)))
    return str(uuid.uuid5(_CHUNK_NAMESPACE, key))


class Ingestor:
    def __init__(
        self,
        catalog: Catalog,
        store: VectorStore,
        embedder: Embedder,
        *,
        chunk_tokens: int,
        overlap_tokens: int,
        batch_chunks: int = 512,
    ) -> None:
        self._catalog = catalog
        self._store = store
        self._embedder = embedder
        self._chunk_tokens = chunk_tokens
        self._overlap = overlap_tokens
        self._batch_chunks = batch_chunks
        self._chunker: Chunker | None = None
        self.ingest_key = hashlib.sha256(
            f"{CHUNKER_VERSION}|{chunk_tokens}|{overlap_tokens}|{embedder.name}|"
            f"{sparse.K1}|{sparse.B}|{sparse.AVG_LEN}".encode()
        ).hexdigest()

    async def run(
        self, paths: Sequence[str], collection: str, acl: Sequence[str] = (), *, progress: bool = False
    ) -> IngestReport:
        started = time.perf_counter()
        check_collection_name(collection)
        groups = check_groups(acl) or [PUBLIC]
        report = IngestReport()
        files, folders = _discover(paths, report)

        await self._catalog.ensure_collection(collection, self._embedder.name, self._embedder.dimension)
        await self._store.prepare(self._embedder.dimension)
        stored = await self._catalog.documents(collection)

        todo: list[_File] = []
        for path, source in files:
            try:
                # Only the hash is kept: a large corpus must not sit in memory until it is embedded.
                content_hash = await asyncio.to_thread(_hash_file, path)
            except OSError as exc:
                report.failed.append((source, f"cannot read: {exc.strerror or exc}"))
                continue
            item = _File(path, source, content_hash)
            if _unchanged(stored.get(source), item, groups, self.ingest_key):
                report.unchanged.append(source)
            else:
                todo.append(item)

        batch: list[_Prepared] = []
        pending = 0  # chunks in batch
        with tqdm(total=len(todo), desc="Ingesting", unit="file", disable=not progress or not todo) as bar:
            for item in todo:
                try:
                    is_new = item.source not in stored
                    prepared = await asyncio.to_thread(self._prepare, item, collection, is_new)
                except DocumentError as exc:
                    report.failed.append((item.source, exc.reason))
                    log.info("skipped %s: %s", item.source, exc.reason)
                else:
                    batch.append(prepared)
                    pending += len(prepared.drafts)
                if pending >= self._batch_chunks:
                    await self._write(batch, collection, groups, report)
                    batch, pending = [], 0
                bar.update(1)
                bar.set_postfix(chunks=report.chunks + pending)
            await self._write(batch, collection, groups, report)

        seen = {source for _, source in files}
        for source, doc in stored.items():
            if source not in seen and _under_any(source, folders) and not Path(source).exists():
                await self._store.delete_document(collection, source)
                await self._catalog.delete_document(doc.id)
                report.deleted.append(source)

        if report.added or report.updated or report.deleted:
            await self._store.optimize()
        report.seconds = time.perf_counter() - started
        return report

    def _prepare(self, item: _File, collection: str, is_new: bool) -> _Prepared:
        try:
            data = item.path.read_bytes()
        except OSError as exc:
            raise DocumentLoadError(item.source, f"cannot read: {exc.strerror or exc}") from exc
        # Hash what is indexed: the file may have changed since discovery.
        item = _File(item.path, item.source, hashlib.sha256(data).hexdigest())
        document = load_document(item.path, item.source, data)
        drafts = self._get_chunker().chunk(document)
        if not drafts:
            raise DocumentLoadError(item.source, "no text to index")
        seen: dict[tuple[tuple[str, ...], str], int] = {}
        ids = []
        for draft in drafts:
            key = (draft.heading_path, draft.text)
            seen[key] = seen.get(key, -1) + 1
            ids.append(chunk_id(collection, item.source, draft, seen[key]))
        return _Prepared(item, len(data), document.title or item.path.stem, drafts, ids, is_new)

    def _get_chunker(self) -> Chunker:
        if self._chunker is None:
            self._chunker = Chunker(self._embedder.tokenizer(), self._chunk_tokens, self._overlap)
        return self._chunker

    async def _write(
        self, batch: list[_Prepared], collection: str, groups: list[str], report: IngestReport
    ) -> None:
        if not batch:
            return
        texts = [d.embed_text for p in batch for d in p.drafts]
        vectors = await asyncio.to_thread(self._embedder.embed, texts)
        records = []
        row = 0
        for prepared in batch:
            for draft, cid in zip(prepared.drafts, prepared.ids, strict=True):
                payload: ChunkPayload = {
                    "collection": collection,
                    "source": prepared.file.source,
                    "title": prepared.title,
                    "heading": " > ".join(draft.heading_path),
                    "text": draft.text,
                    "acl": groups,
                    "ordinal": draft.ordinal,
                }
                records.append(
                    ChunkRecord(cid, vectors[row], sparse.document_vector(draft.embed_text), payload)
                )
                row += 1
        await self._store.upsert(records)
        for prepared in batch:
            await self._store.delete_document(collection, prepared.file.source, keep=prepared.ids)
            await self._catalog.save_document(
                collection=collection,
                source=prepared.file.source,
                title=prepared.title,
                content_hash=prepared.file.content_hash,
                ingest_key=self.ingest_key,
                acl=groups,
                size_bytes=prepared.size,
                chunks=[
                    ChunkRow(cid, d.ordinal, " > ".join(d.heading_path), d.token_count)
                    for d, cid in zip(prepared.drafts, prepared.ids, strict=True)
                ],
            )
            (report.added if prepared.is_new else report.updated).append(prepared.file.source)
        report.chunks += len(records)


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _unchanged(stored: StoredDocument | None, item: _File, groups: list[str], key: str) -> bool:
    return (
        stored is not None
        and stored.content_hash == item.content_hash
        and stored.ingest_key == key
        and sorted(stored.acl) == groups
    )


def _discover(paths: Sequence[str], report: IngestReport) -> tuple[list[tuple[Path, str]], list[str]]:
    """Files to ingest as (path, source), and the folders that were walked (for deletions)."""
    files: dict[str, Path] = {}
    folders: list[str] = []
    for given in paths:
        base = os.path.normpath(given)
        path = Path(base)
        if path.is_dir():
            folders.append(base)
            for child in sorted(path.rglob("*")):
                rel = child.relative_to(path)
                if any(part.startswith(".") for part in rel.parts) or not child.is_file():
                    continue
                source = os.path.normpath(os.path.join(base, str(rel)))
                if is_supported(child):
                    files[source] = child
                else:
                    report.skipped.append((source, "unsupported file type"))
        elif path.is_file():
            if is_supported(path):
                files[base] = path
            else:
                report.failed.append((base, UnsupportedFileError(base, "unsupported file type").reason))
        elif path.exists():
            report.failed.append((base, "not a regular file or folder"))
        else:
            report.failed.append((base, "no such file or folder"))
    return list((p, s) for s, p in files.items()), folders


def _under_any(source: str, folders: list[str]) -> bool:
    return any(source.startswith(folder.rstrip(os.sep) + os.sep) or folder == "." for folder in folders)
