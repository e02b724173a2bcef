"""The SQL schema, one ORM class per table. Alembic migrations in ``migrations/`` create it.

Tables are grouped by the package that writes them; any package may read them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


# --- knowledge/: collections, documents and their chunks (the ingestion sync state) ---


class Collection(Base):
    """A scope of documents searched together (e.g. one per team)."""

    __tablename__ = "collections"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    # Vectors of one collection must come from one model; a mismatch is refused, not mixed.
    embedding_model: Mapped[str] = mapped_column(String(512))
    embedding_dim: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    documents: Mapped[list[Document]] = relationship(
        back_populates="collection_row", cascade="all, delete-orphan", passive_deletes=True
    )


class Document(Base):
    """One ingested file. ``source`` is its path as given at ingest, normalised."""

    __tablename__ = "documents"
    __table_args__ = (UniqueConstraint("collection", "source", name="uq_documents_collection_source"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    collection: Mapped[str] = mapped_column(
        String(63), ForeignKey("collections.name", ondelete="CASCADE"), index=True
    )
    source: Mapped[str] = mapped_column(String(2048))
    title: Mapped[str] = mapped_column(String(1024))
    content_hash: Mapped[str] = mapped_column(String(64))
    # Hash of everything besides the bytes that shapes the chunks (chunker settings, model):
    # when it changes, unchanged files are re-chunked too.
    ingest_key: Mapped[str] = mapped_column(String(64))
    acl: Mapped[list[str]] = mapped_column(JSON)
    size_bytes: Mapped[int] = mapped_column(Integer)
    chunk_count: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    collection_row: Mapped[Collection] = relationship(back_populates="documents")
    chunks: Mapped[list[Chunk]] = relationship(
        back_populates="document", cascade="all, delete-orphan", passive_deletes=True
    )


class Chunk(Base):
    """A chunk's identity; its text and vectors live in Qdrant under the same id."""

    __tablename__ = "chunks"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    document_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("documents.id", ondelete="CASCADE"), index=True
    )
    ordinal: Mapped[int] = mapped_column(Integer)
    heading: Mapped[str] = mapped_column(String(2048))
    token_count: Mapped[int] = mapped_column(Integer)

    document: Mapped[Document] = relationship(back_populates="chunks")


# --- agent/: the answer log and the adapter registry ---


class Adapter(Base):
    """A LoRA adapter version. At most one is active; files live in ``KBOT_DATA_DIR/adapters``."""

    __tablename__ = "adapters"
    # At most one active adapter, whatever code path writes: a partial unique index.
    __table_args__ = (
        Index(
            "uq_adapters_one_active",
            "active",
            unique=True,
            sqlite_where=text("active"),
            postgresql_where=text("active"),
        ),
    )

    version: Mapped[str] = mapped_column(String(64), primary_key=True)
    base_model: Mapped[str] = mapped_column(String(512))
    path: Mapped[str] = mapped_column(String(2048))
    active: Mapped[bool] = mapped_column(default=False, index=True)
    # What it was trained on (counts, data hash, config) and how it scored: read by the eval gate.
    training: Mapped[dict[str, object]] = mapped_column(JSON, default=dict)
    scores: Mapped[dict[str, object]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    activated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class AdapterPromotion(Base):
    """One change of the active adapter: a promotion (pushes ``version``) or a rollback (returns to
    ``version``, an earlier promoted one; ``None`` is the base model). Replaying the rows in order
    gives the stack that ``kbot adapters rollback`` walks back through."""

    __tablename__ = "adapter_promotions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    kind: Mapped[str] = mapped_column(String(16))  # promote | rollback
    version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    previous: Mapped[str | None] = mapped_column(String(64), nullable=True)
    by: Mapped[str] = mapped_column(String(256), default="")  # "nightly run 7", "cli"
    forced: Mapped[bool] = mapped_column(default=False)  # promoted without a passing evaluation
    evaluation: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # the gate's verdict used


class Answer(Base):
    """Every answer kbot gave, with everything needed to learn from feedback on it later.

    ``messages`` is the exact message list the model saw (system, history, sources, question):
    preference pairs are built on it, so it must never be reconstructed after the fact.
    """

    __tablename__ = "answers"
    # "Did kbot answer in this thread?" decides whether a follow-up needs a mention.
    __table_args__ = (Index("ix_answers_platform_channel_thread", "platform", "channel", "thread"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    platform: Mapped[str] = mapped_column(String(32))
    asker: Mapped[str] = mapped_column(String(256))
    channel: Mapped[str] = mapped_column(String(256), default="")
    thread: Mapped[str] = mapped_column(String(256), default="", index=True)
    collections: Mapped[list[str]] = mapped_column(JSON)
    question: Mapped[str] = mapped_column(String)
    search_query: Mapped[str] = mapped_column(String)
    messages: Mapped[list[dict[str, str]]] = mapped_column(JSON)
    retrieved: Mapped[list[dict[str, object]]] = mapped_column(JSON)
    answer: Mapped[str] = mapped_column(String)
    citations: Mapped[list[dict[str, str]]] = mapped_column(JSON)
    # ok | not_found | error
    status: Mapped[str] = mapped_column(String(16))
    error: Mapped[str] = mapped_column(String, default="")
    base_model: Mapped[str] = mapped_column(String(512))
    adapter_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    latency_ms: Mapped[int] = mapped_column(Integer)
    # The question's embedding (by ``embedding_model``), made anyway while answering; the export
    # groups near-duplicate questions with it instead of embedding them again.
    question_vector: Mapped[list[float] | None] = mapped_column(JSON, nullable=True)
    embedding_model: Mapped[str] = mapped_column(String(512), default="")
    # Restricted text (a document ingested with --acl) was in the prompt, as a source or in the
    # thread's history. Such answers are never exported for training: an adapter answers everyone.
    # NULL: logged before kbot recorded it (the export then judges by the retrieved chunks).
    restricted: Mapped[bool | None] = mapped_column(nullable=True)
    # The model's own text before the grounding check replaced anything (None: no model was
    # called, e.g. nothing relevant was found), and the check's verdict on it:
    # {"mode": "strict"|"off", "passed": bool, "reasons": [...], "fallback": None|"extractive"|"not_found"}.
    # The shown text is ``answer``; it is the model's own only when ``fallback`` is None.
    generated: Mapped[str | None] = mapped_column(String, nullable=True)
    grounding: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


# --- bot/: inbound event ledger (dedupe + rate limits) and where each answer was posted ---


class InboundEvent(Base):
    """One accepted chat event. The key is unique, so replicas agree on who handles an event.

    ``key`` is platform-qualified (``slack:msg:C1:1700000000.000100``); ``kind`` is ``question``
    for messages kbot answers (counted by the per-user rate limit) or ``event`` for the rest.
    """

    __tablename__ = "inbound_events"
    # The rate limit counts one person's recent questions.
    __table_args__ = (
        Index("ix_inbound_events_actor", "platform", "actor", "received_at"),
        Index("ix_inbound_events_orphans", "state", "lease_until"),
    )

    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    platform: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(256))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    # A question's claim: working (held by ``holder`` until ``lease_until``, renewed while it is
    # answered), then answered or failed. ``payload`` is what another replica needs to answer it
    # when the holder dies. Null for other events.
    state: Mapped[str | None] = mapped_column(String(16), nullable=True)
    holder: Mapped[str | None] = mapped_column(String(256), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    payload: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class AnswerMessage(Base):
    """A chat message that shows (part of) an answer: reactions on it are votes on that answer."""

    __tablename__ = "answer_messages"

    platform: Mapped[str] = mapped_column(String(32), primary_key=True)
    channel: Mapped[str] = mapped_column(String(256), primary_key=True)
    message_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    answer_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("answers.id", ondelete="CASCADE"), index=True
    )


# --- finetune/: the vote log and corrections, what the learning loop trains on ---


class Vote(Base):
    """A person's live vote on an answer: +1 or -1. One per (answer, voter); a change replaces it."""

    __tablename__ = "votes"
    __table_args__ = (UniqueConstraint("answer_id", "voter", name="uq_votes_answer_voter"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    answer_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("answers.id", ondelete="CASCADE"), index=True
    )
    platform: Mapped[str] = mapped_column(String(32))
    voter: Mapped[str] = mapped_column(String(256))
    value: Mapped[int] = mapped_column(Integer)
    # reaction | button | feedback (Teams' feedback dialog) | web
    origin: Mapped[str] = mapped_column(String(32))
    comment: Mapped[str] = mapped_column(String, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)


class Correction(Base):
    """A better answer written by a person. One per (answer, author); editing replaces it."""

    __tablename__ = "corrections"
    __table_args__ = (UniqueConstraint("answer_id", "author", name="uq_corrections_answer_author"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    answer_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("answers.id", ondelete="CASCADE"), index=True
    )
    platform: Mapped[str] = mapped_column(String(32))
    author: Mapped[str] = mapped_column(String(256))
    text: Mapped[str] = mapped_column(String)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    # Review (KBOT_CORRECTIONS=review): pending → approved (as written, or edited: ``approved_text``)
    # or rejected. Only approved ones are trained on and answered from (trust: approved on arrival).
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    approved_text: Mapped[str | None] = mapped_column(String, nullable=True)
    reviewer: Mapped[str] = mapped_column(String(256), default="")
    reviewed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # Who may be answered from it once approved: the ACL scope of the answer it corrects.
    acl: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)


class TrainingRun(Base):
    """One run of the nightly learning job: what went in, what came out, what was decided."""

    __tablename__ = "training_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # running | promoted | kept | skipped | failed
    status: Mapped[str] = mapped_column(String(16))
    inputs: Mapped[dict[str, object]] = mapped_column(JSON, default=dict)
    counts: Mapped[dict[str, object]] = mapped_column(JSON, default=dict)
    metrics: Mapped[dict[str, object]] = mapped_column(JSON, default=dict)
    candidate: Mapped[str | None] = mapped_column(String(64), nullable=True)
    decision: Mapped[str] = mapped_column(String, default="")
    error: Mapped[str] = mapped_column(String, default="")
    seconds: Mapped[float | None] = mapped_column(Float, nullable=True)


class JobLock(Base):
    """A lock one process holds while running a job (the nightly run), so runs never overlap."""

    __tablename__ = "job_locks"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(256))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SourceSync(Base):
    """The last sync of a configured source (``[sources]``): what ``kbot serve`` did, and when."""

    __tablename__ = "source_syncs"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    path: Mapped[str] = mapped_column(String)
    collection: Mapped[str] = mapped_column(String(64))
    # running | ok | failed
    status: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_ok_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    detail: Mapped[str] = mapped_column(String, default="")
