"""Incremental ingestion: bring a collection in line with files on disk.

Which files are read is :mod:`knowledge.discovery`'s business: links are not followed out of a
folder (by default not at all), nothing under /proc, /sys or /dev is read. For each file:
unchanged content, ACL and chunking settings → skipped without loading the model; new or
changed → loaded, chunked, embedded and upserted, then the document's stale chunks are deleted
(upsert first, so a search never sees the document missing) and its catalog rows written. Each
file is committed as soon as it is done, so a run killed midway keeps every file it finished and
a re-run finds them unchanged. Files that vanished from a folder given on the command line, and
documents discovery now refuses (a link no longer followed), are deleted from the collection.
A file that fails to load, or is over one of the :class:`IngestLimits`, is reported and skipped;
its previously ingested version, if any, stays searchable.
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

from kbot.errors import DocumentError, DocumentLoadError, NoTextError
from knowledge import sparse
from knowledge.catalog import Catalog, ChunkRow, StoredDocument, check_collection_name, check_groups
from knowledge.chunking import CHUNKER_VERSION, ChunkDraft, Chunker
from knowledge.discovery import Discovery, discover
from knowledge.embeddings import Embedder
from knowledge.loaders import is_supported, load_document, open_document, read_document
from knowledge.vectorstore import PUBLIC, ChunkPayload, ChunkRecord, VectorStore

log = logging.getLogger(__name__)
NO_TEXT = "no text"  # IngestReport.skipped's reason for a file with nothing to index
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
class IngestLimits:
    """What one file may cost. A file over a limit fails alone, the limit named in its reason.

    Without them one hostile or odd file holds a whole run for many minutes and gigabytes:
    a 5 MB one-line text file makes ~5,500 chunks to embed, a DOCX bomb inflates in memory
    (the loader also refuses zip bombs by their unpack ratio, see ``knowledge.loaders.office``).
    """

    max_bytes: int = 256 * 1024**2  # the file itself, refused before it is read
    max_chars: int = 2_000_000  # text extracted from it: ~1,000 pages
    # Chunks it makes: at 200 tokens a chunk, 2M characters make ~2,200 in English, ~12,000 in Chinese.
    max_chunks: int = 10_000

    def __post_init__(self) -> None:
        if min(self.max_bytes, self.max_chars, self.max_chunks) < 1:
            raise ValueError("ingest limits must be positive")


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
        limits: IngestLimits | None = None,
    ) -> None:
        self._catalog = catalog
        self._store = store
        self._embedder = embedder
        self._chunk_tokens = chunk_tokens
        self._overlap = overlap_tokens
        self._batch_chunks = batch_chunks
        self.limits = limits or IngestLimits()
        self._chunker: Chunker | None = None
        self.ingest_key = hashlib.sha256(
            f"{CHUNKER_VERSION}|{chunk_tokens}|{overlap_tokens}|{embedder.name}|"
            f"{sparse.K1}|{sparse.B}|{sparse.AVG_LEN}".encode()
        ).hexdigest()

    async def run(
        self,
        paths: Sequence[str],
        collection: str,
        acl: Sequence[str] = (),
        *,
        progress: bool = False,
        follow_symlinks: bool = False,
    ) -> IngestReport:
        started = time.perf_counter()
        check_collection_name(collection)
        groups = check_groups(acl) or [PUBLIC]
        report = IngestReport()
        found = discover(paths, follow_symlinks=follow_symlinks, is_supported=is_supported)
        report.failed.extend(found.failed)
        report.skipped.extend(found.skipped)

        await self._catalog.ensure_collection(collection, self._embedder.name, self._embedder.dimension)
        await self._store.prepare(self._embedder.dimension)
        stored = await self._catalog.documents(collection)

        todo: list[_File] = []
        for file in found.files:
            try:
                # Only the hash is kept: a large corpus must not sit in memory until it is embedded.
                content_hash = await asyncio.to_thread(_hash_file, file.path, file.source, self.limits)
            except DocumentError as exc:
                report.failed.append((file.source, exc.reason))
                continue
            item = _File(file.path, file.source, content_hash)
            if _unchanged(stored.get(item.source), item, groups, self.ingest_key):
                report.unchanged.append(item.source)
            else:
                todo.append(item)

        with tqdm(total=len(todo), desc="Ingesting", unit="file", disable=not progress or not todo) as bar:
            for item in todo:
                try:
                    is_new = item.source not in stored
                    prepared = await asyncio.to_thread(self._prepare, item, collection, is_new)
                except NoTextError:
                    # Read fine, nothing to index (a table of contents): skipped, not failed. A
                    # document that became empty must not keep answering from its old text.
                    report.skipped.append((item.source, NO_TEXT))
                    if (old := stored.get(item.source)) is not None:
                        await self.remove(collection, item.source, old.id)
                        report.deleted.append(item.source)
                except DocumentError as exc:
                    report.failed.append((item.source, exc.reason))
                    log.info("skipped %s: %s", item.source, exc.reason)
                else:
                    # Written before the next file is read: a run killed during a slow file
                    # keeps every file before it.
                    await self._write(prepared, collection, groups, report)
                bar.update(1)
                bar.set_postfix(chunks=report.chunks)

        await self._delete_gone(collection, stored, found, report)
        if report.added or report.updated or report.deleted:
            await self._store.optimize()
        report.seconds = time.perf_counter() - started
        return report

    async def _delete_gone(
        self, collection: str, stored: dict[str, StoredDocument], found: Discovery, report: IngestReport
    ) -> None:
        """Delete documents gone from a walked folder, and those discovery now refuses to read."""
        seen = {file.source for file in found.files}
        refused = sorted(found.refused)  # a refused link to a folder refuses what is under it
        for source, doc in stored.items():
            gone = source not in seen and _under_any(source, found.folders) and not Path(source).exists()
            if gone or (source not in seen and (source in refused or _under_any(source, refused))):
                await self.remove(collection, source, doc.id)
                report.deleted.append(source)

    async def remove(self, collection: str, source: str, document_id: int) -> None:
        """Take one document out: its points (dense and sparse vectors), then its catalog rows."""
        await self._store.delete_document(collection, source)
        await self._catalog.delete_document(document_id)

    def _prepare(self, item: _File, collection: str, is_new: bool) -> _Prepared:
        limits = self.limits
        data = read_document(item.path, item.source, max_bytes=limits.max_bytes)
        # Hash what is indexed: the file may have changed since discovery.
        item = _File(item.path, item.source, hashlib.sha256(data).hexdigest())
        # The document's own name (a link's, not its target's) picks the loader and the title.
        name = Path(item.source)
        document = load_document(name, item.source, data)
        chars = sum(len(section.text) for section in document.sections)
        if chars > limits.max_chars:
            limit = f"{limits.max_chars:,}-character limit per file"
            raise DocumentLoadError(item.source, f"extracted text is over the {limit} ({chars:,} characters)")
        drafts = self._get_chunker().chunk(document)
        if not drafts:
            raise NoTextError(item.source, "no text to index")
        if len(drafts) > limits.max_chunks:
            raise DocumentLoadError(
                item.source,
                f"it makes {len(drafts):,} chunks, over the {limits.max_chunks:,}-chunk limit per file",
            )
        seen: dict[tuple[tuple[str, ...], str], int] = {}
        ids = []
        for draft in drafts:
            key = (draft.heading_path, draft.text)
            seen[key] = seen.get(key, -1) + 1
            ids.append(chunk_id(collection, item.source, draft, seen[key]))
        return _Prepared(item, len(data), document.title or name.stem, drafts, ids, is_new)

    def _get_chunker(self) -> Chunker:
        if self._chunker is None:
            self._chunker = Chunker(self._embedder.tokenizer(), self._chunk_tokens, self._overlap)
        return self._chunker

    async def _write(
        self, prepared: _Prepared, collection: str, groups: list[str], report: IngestReport
    ) -> None:
        """Embed, upsert and catalog one file: when this returns, the file is committed."""
        texts = [d.embed_text for d in prepared.drafts]
        # In slices, so a big file's tensors stay small; the embedder batches within each.
        slices = [
            await asyncio.to_thread(self._embedder.embed, texts[start : start + self._batch_chunks])
            for start in range(0, len(texts), self._batch_chunks)
        ]
        records = []
        source = prepared.file.source
        for draft, cid, vector in zip(
            prepared.drafts, prepared.ids, (v for s in slices for v in s), strict=True
        ):
            payload: ChunkPayload = {
                "collection": collection,
                "source": source,
                "title": prepared.title,
                "heading": " > ".join(draft.heading_path),
                "text": draft.text,
                "acl": groups,
                "ordinal": draft.ordinal,
            }
            records.append(ChunkRecord(cid, vector, sparse.document_vector(draft.embed_text), payload))
        await self._store.upsert(records)
        await self._store.delete_document(collection, source, keep=prepared.ids)
        await self._catalog.save_document(
            collection=collection,
            source=source,
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
        (report.added if prepared.is_new else report.updated).append(source)
        report.chunks += len(records)


def _hash_file(path: Path, source: str, limits: IngestLimits) -> str:
    digest = hashlib.sha256()
    with open_document(path, source, max_bytes=limits.max_bytes) as handle:
        try:
            while block := handle.read(1 << 20):
                digest.update(block)
        except OSError as exc:
            raise DocumentLoadError(source, f"cannot read: {exc.strerror or exc}") from exc
    return digest.hexdigest()


def _unchanged(stored: StoredDocument | None, item: _File, groups: list[str], key: str) -> bool:
    return (
        stored is not None
        and stored.content_hash == item.content_hash
        and stored.ingest_key == key
        and sorted(stored.acl) == groups
    )


def _under_any(source: str, folders: list[str]) -> bool:
    return any(source.startswith(folder.rstrip(os.sep) + os.sep) or folder == "." for folder in folders)
