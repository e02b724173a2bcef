"""The SQL side of the knowledge base: collections, documents and their chunk ids.

This is the ingestion sync state (a document's content hash decides whether it is re-embedded)
and the map from a chunk id back to its document, which answers and dashboards use.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import delete, func, select

from kbot.db import Database
from kbot.db.models import Chunk, Collection, Document, utcnow
from kbot.errors import InvalidNameError, KnowledgeError, UnknownCollectionError

_COLLECTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
# Slack user-group ids, AAD object ids, e-mail-like and plain names all fit; '*' means "everyone".
_GROUP_NAME = re.compile(r"^[\w.@:/-]{1,128}$")


def check_collection_name(name: str) -> str:
    if not _COLLECTION_NAME.match(name):
        raise InvalidNameError(
            f"Invalid collection name {name!r}: use 1-63 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit."
        )
    return name


def check_groups(groups: Sequence[str]) -> list[str]:
    for group in groups:
        if not _GROUP_NAME.match(group):
            raise InvalidNameError(
                f"Invalid group name {group!r}: use letters, digits and . @ : / _ - (at most 128)."
            )
    return sorted(set(groups))


@dataclass(frozen=True)
class CollectionStats:
    name: str
    documents: int
    chunks: int
    embedding_model: str


@dataclass(frozen=True)
class StoredDocument:
    id: int
    source: str
    content_hash: str
    ingest_key: str
    acl: list[str]


@dataclass(frozen=True)
class ChunkRow:
    id: str
    ordinal: int
    heading: str
    token_count: int


class Catalog:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def collection_names(self) -> list[str]:
        async with self._db.session() as s:
            return list(await s.scalars(select(Collection.name).order_by(Collection.name)))

    async def require(self, names: Sequence[str]) -> None:
        """Raise :class:`UnknownCollectionError` unless every name exists."""
        known = await self.collection_names()
        for name in names:
            if name not in known:
                raise UnknownCollectionError(name, known)

    async def ensure_collection(self, name: str, model: str, dimension: int) -> None:
        async with self._db.session() as s:
            row = await s.get(Collection, name)
            if row is None:
                s.add(Collection(name=name, embedding_model=model, embedding_dim=dimension))
            elif row.embedding_model != model or row.embedding_dim != dimension:
                raise KnowledgeError(
                    f"Collection {name!r} was built with embedding model {row.embedding_model!r}, "
                    f"but KBOT_EMBEDDING_MODEL is {model!r}. Set it back, or ingest into a new collection."
                )

    async def documents(self, collection: str) -> dict[str, StoredDocument]:
        async with self._db.session() as s:
            rows = await s.execute(
                select(
                    Document.id, Document.source, Document.content_hash, Document.ingest_key, Document.acl
                ).where(Document.collection == collection)
            )
            return {
                r.source: StoredDocument(r.id, r.source, r.content_hash, r.ingest_key, r.acl) for r in rows
            }

    async def save_document(
        self,
        *,
        collection: str,
        source: str,
        title: str,
        content_hash: str,
        ingest_key: str,
        acl: list[str],
        size_bytes: int,
        chunks: Sequence[ChunkRow],
    ) -> None:
        """Insert or replace a document row and its chunk rows, in one transaction."""
        async with self._db.session() as s:
            doc = await s.scalar(
                select(Document).where(Document.collection == collection, Document.source == source)
            )
            if doc is None:
                doc = Document(collection=collection, source=source)
                s.add(doc)
            doc.title = title[:1024]
            doc.content_hash = content_hash
            doc.ingest_key = ingest_key
            doc.acl = acl
            doc.size_bytes = size_bytes
            doc.chunk_count = len(chunks)
            doc.updated_at = utcnow()
            await s.flush()
            await s.execute(delete(Chunk).where(Chunk.document_id == doc.id))
            s.add_all(
                Chunk(
                    id=c.id,
                    document_id=doc.id,
                    ordinal=c.ordinal,
                    heading=c.heading[:2048],
                    token_count=c.token_count,
                )
                for c in chunks
            )

    async def delete_document(self, document_id: int) -> None:
        async with self._db.session() as s:
            await s.execute(delete(Chunk).where(Chunk.document_id == document_id))
            await s.execute(delete(Document).where(Document.id == document_id))

    async def delete_collection(self, name: str) -> None:
        """The collection's row, documents and chunk rows, in one transaction."""
        async with self._db.session() as s:
            documents = select(Document.id).where(Document.collection == name)
            await s.execute(delete(Chunk).where(Chunk.document_id.in_(documents)))
            await s.execute(delete(Document).where(Document.collection == name))
            await s.execute(delete(Collection).where(Collection.name == name))

    async def stats(self) -> list[CollectionStats]:
        async with self._db.session() as s:
            rows = await s.execute(
                select(
                    Collection.name,
                    Collection.embedding_model,
                    func.count(Document.id),
                    func.coalesce(func.sum(Document.chunk_count), 0),
                )
                .outerjoin(Document, Document.collection == Collection.name)
                .group_by(Collection.name, Collection.embedding_model)
                .order_by(Collection.name)
            )
            return [
                CollectionStats(name, int(docs), int(chunks), model) for name, model, docs, chunks in rows
            ]
