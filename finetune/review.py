"""Corrections are reviewed before anything learns from them or answers with them.

A correction arrives ``pending`` (``VoteLog.correct``; an edit of its text makes it pending
again). A reviewer then approves it — as written, or edited (``approved_text``) — or rejects it.
Approving indexes it as a verified answer (``knowledge.verified``): the question it corrects,
answered at once with the approved text, to the ACL scope of the answer it corrects unless the
reviewer sets another; only approved corrections are exported for training (``finetune.export``).
Rejecting, or an edit by its author, takes it out of the verified answers until it is approved
(again). ``KBOT_CORRECTIONS=trust`` approves every correction on arrival, as reviewer ``trust``.

Order of writes: the verified index first on approval, out of it first on rejection, then the
row — so a failure half-way leaves at worst an approved answer not yet marked in SQL (approving
again finishes it), never a rejected one still answered from. A correction whose text changed
after the reviewer loaded it is not approved unseen: :class:`StaleReview`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal, Protocol

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from finetune.votes import MAX_TEXT
from kbot.db import Database
from kbot.db.models import Answer, Chunk, Correction, Document, Vote, utcnow
from kbot.errors import FeedbackError, KnowledgeError, VectorStoreError
from knowledge.verified import VerifiedAnswer, answer_scope

log = logging.getLogger(__name__)
Mode = Literal["review", "trust"]
STATUSES = ("pending", "approved", "rejected")
TRUST: Final = "trust"  # the mode, and the reviewer of corrections approved on arrival
MAX_QUEUE = 200
SNIPPET = 600  # characters of a source's text shown to the reviewer
# One numbered source in the prompt's last user turn, as agent.prompts.build_messages writes it
# (its title and text cannot hold a double quote: quote() replaced them).
_SOURCE = re.compile(r'^\[(\d+)\] (.*?): "(.*)"$')


class StaleReview(FeedbackError):
    """The correction changed after the reviewer loaded it."""


class VerifiedIndex(Protocol):
    """Where approved corrections are answered from (``knowledge.verified.VerifiedAnswers``)."""

    async def add(self, answer: VerifiedAnswer) -> None: ...

    async def count(self) -> int: ...

    async def remove(self, correction_id: int) -> None: ...


@dataclass(frozen=True)
class ReviewItem:
    """A correction with everything a reviewer needs to judge it."""

    id: int
    answer_id: str
    author: str
    platform: str
    created_at: datetime
    updated_at: datetime
    status: str
    text: str  # as its author wrote it
    approved_text: str | None  # the reviewer's edit; None: as written
    reviewer: str
    reviewed_at: datetime | None
    acl: list[str] | None  # who is answered from it, once approved
    question: str
    answer: str  # what people were shown
    not_found: bool  # the corrected answer said the documents do not say
    verified: int | None  # the shown answer was this correction's verified answer, or None
    sources: list[dict[str, Any]]  # {n, title, source, text, cited, quote}: what the answer used
    reasons: list[dict[str, str]]  # {platform, text}: the 👎 reasons people gave on that answer

    def to_dict(self) -> dict[str, Any]:
        return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in asdict(self).items()}


class Review:
    def __init__(self, db: Database, verified: VerifiedIndex, mode: Mode = "review") -> None:
        self._db = db
        self._verified = verified
        self.mode = mode

    async def restore_verified(self) -> int:
        """Index every approved correction again when the vector store holds fewer than were
        approved (it was rebuilt, or replaced by a Qdrant server); how many were indexed."""
        async with self._db.session() as s:
            rows = (
                await s.execute(
                    select(Correction, Answer)
                    .join(Answer, Answer.id == Correction.answer_id)
                    .where(Correction.status == "approved", Correction.acl.is_not(None))
                    .order_by(Correction.id)
                )
            ).all()
        readable = [(c, a) for c, a in rows if c.acl]  # an empty scope was never indexed
        if await self._verified.count() >= len(readable):
            return 0
        indexed = 0
        for correction, answer in readable:
            text, at = correction.approved_text or correction.text, correction.reviewed_at or utcnow()
            try:
                await self._verified.add(_verified(correction, answer, text, list(correction.acl or []), at))
            except VectorStoreError:
                raise
            except KnowledgeError as exc:  # as approving it would fail today: that one stays out
                log.warning("approved correction %d could not be indexed again: %s", correction.id, exc)
                continue
            indexed += 1
        log.warning(
            "the vector store lacked verified answers: %d approved corrections indexed again", indexed
        )
        return indexed

    async def counts(self) -> dict[str, int]:
        """How many corrections are in each status."""
        async with self._db.session() as s:
            rows = await s.execute(select(Correction.status, func.count()).group_by(Correction.status))
            found = {status: int(n) for status, n in rows}
        return {status: found.get(status, 0) for status in STATUSES}

    async def queue(self, status: str = "pending", limit: int = 50) -> list[ReviewItem]:
        """Corrections in ``status``: pending ones oldest first (the queue's order), reviewed
        ones most recently reviewed first."""
        if status not in STATUSES:
            raise FeedbackError(f"A correction's status is one of {', '.join(STATUSES)}, not {status!r}.")
        order = (
            (Correction.updated_at, Correction.id)
            if status == "pending"
            else (Correction.reviewed_at.desc(), Correction.id.desc())
        )
        query = (
            select(Correction, Answer)
            .join(Answer, Answer.id == Correction.answer_id)
            .where(Correction.status == status)
            .order_by(*order)
            .limit(max(1, min(limit, MAX_QUEUE)))
        )
        async with self._db.session() as s:
            pairs = [(c, a) for c, a in (await s.execute(query)).all()]
            return await _items(s, pairs)

    async def item(self, correction_id: int) -> ReviewItem | None:
        async with self._db.session() as s:
            found = await _load(s, correction_id)
            return (await _items(s, [found]))[0] if found else None

    async def approve(
        self,
        correction_id: int,
        reviewer: str,
        *,
        text: str | None = None,
        acl: list[str] | None = None,
        seen: datetime | None = None,
    ) -> ReviewItem | None:
        """Approve a correction (``text``: the reviewer's edit) and answer its question from it,
        for ``acl`` (default: the corrected answer's own scope). ``seen``: the ``updated_at`` the
        reviewer was shown. None when there is no such correction."""
        async with self._db.session() as s:
            found = await _load(s, correction_id)
        if found is None:
            return None
        correction, answer = found
        _check_seen(correction, seen)
        edited = _edit(text, correction.text)
        scope = _scope(acl) if acl is not None else await answer_scope(self._db, answer)
        now = utcnow()
        await self._verified.add(_verified(correction, answer, edited or correction.text, scope, now))
        values = {"approved_text": edited, "acl": scope}
        if not await self._mark(correction, "approved", reviewer, now, values):
            await self._verified.remove(correction.id)  # it was the old text that went in
            raise _stale(correction.id)
        return await self.item(correction_id)

    async def reject(
        self, correction_id: int, reviewer: str, *, seen: datetime | None = None
    ) -> ReviewItem | None:
        """Reject a correction: never trained on, no longer answered from. None when there is no
        such correction."""
        async with self._db.session() as s:
            found = await _load(s, correction_id)
        if found is None:
            return None
        correction, _ = found
        _check_seen(correction, seen)
        await self._verified.remove(correction.id)
        if not await self._mark(
            correction, "rejected", reviewer, utcnow(), {"approved_text": None, "acl": None}
        ):
            raise _stale(correction.id)
        return await self.item(correction_id)

    async def arrived(self, correction_id: int | None) -> None:
        """After ``VoteLog.correct`` wrote a correction (None: a late write that changed nothing).
        A pending one is approved at once under trust; under review, an edit stops an approved
        earlier version from being answered until it is reviewed again."""
        if correction_id is None:
            return
        async with self._db.session() as s:
            found = await _load(s, correction_id)
        if found is None or found[0].status != "pending":
            return  # the same text again keeps its review
        if self.mode == TRUST:
            try:
                await self.approve(correction_id, TRUST)
            except StaleReview:
                return  # edited again meanwhile: that edit's own arrival approves it
            except KnowledgeError as exc:
                # The correction is saved, and pending is the safe state: a reviewer sees it.
                log.error(
                    "correction %s could not be approved on arrival, it waits for review: %s",
                    correction_id,
                    exc,
                )
        elif found[0].updated_at != found[0].created_at:  # an edit, not a new correction
            await self._verified.remove(correction_id)

    async def _mark(
        self, correction: Correction, status: str, reviewer: str, at: datetime, values: dict[str, Any]
    ) -> bool:
        """Write the verdict, only onto the text that was reviewed; whether it was."""
        stmt = (
            update(Correction)
            .where(Correction.id == correction.id, Correction.text == correction.text)
            .values(status=status, reviewer=reviewer[:256], reviewed_at=at, **values)
        )
        async with self._db.session() as s:
            result = await s.execute(stmt)
        return bool(getattr(result, "rowcount", 0))


def _verified(
    correction: Correction, answer: Answer, text: str, acl: list[str], at: datetime
) -> VerifiedAnswer:
    collections = list(answer.collections)
    return VerifiedAnswer(correction.id, answer.question, text, collections, acl, at)


def _stale(correction_id: int) -> StaleReview:
    return StaleReview(
        f"Correction {correction_id} was changed by its author after you loaded it; "
        "reload the queue and review the new text."
    )


def _check_seen(correction: Correction, seen: datetime | None) -> None:
    if seen is not None and _utc(correction.updated_at) != _utc(seen):
        raise _stale(correction.id)


def _edit(text: str | None, written: str) -> str | None:
    """The reviewer's edit, cleaned; None when there is none (or it is the text as written)."""
    if text is None:
        return None
    text = text.strip()
    if not text:
        raise FeedbackError("An edited correction needs some text; reject it instead to drop it.")
    if len(text) > MAX_TEXT:
        raise FeedbackError(f"A correction may be at most {MAX_TEXT:,} characters long.")
    return None if text == written else text


def _scope(acl: list[str]) -> list[str]:
    groups = [g.strip() for g in acl if isinstance(g, str) and g.strip()]
    if not groups or len(groups) != len(acl):
        raise FeedbackError("An ACL scope is a list of group names ('*' for everyone), none of them empty.")
    return sorted(set(groups))


def _utc(value: datetime) -> datetime:
    # SQLite hands timestamps back without their zone; kbot writes them in UTC.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


async def _load(s: AsyncSession, correction_id: int) -> tuple[Correction, Answer] | None:
    query = (
        select(Correction, Answer)
        .join(Answer, Answer.id == Correction.answer_id)
        .where(Correction.id == correction_id)
    )
    row = (await s.execute(query)).first()
    return (row[0], row[1]) if row else None


async def _items(s: AsyncSession, pairs: list[tuple[Correction, Answer]]) -> list[ReviewItem]:
    """Review items for (correction, answer) pairs, with the sources' titles and the 👎 reasons
    read in two queries for all of them."""
    answer_ids = sorted({a.id for _, a in pairs})
    reasons: dict[str, list[dict[str, str]]] = {}
    if answer_ids:
        votes = await s.execute(
            select(Vote.answer_id, Vote.platform, Vote.comment)
            .where(Vote.answer_id.in_(answer_ids), Vote.value < 0, Vote.comment != "")
            .order_by(Vote.updated_at, Vote.id)
        )
        for answer_id, platform, comment in votes:
            reasons.setdefault(answer_id, []).append({"platform": platform, "text": comment})
    chunk_ids = sorted(
        {str(r.get("chunk_id")) for _, a in pairs for r in a.retrieved if r.get("used")}
        | {str(c["chunk_id"]) for _, a in pairs for c in a.citations if c.get("chunk_id")}
    )
    titles: dict[str, str] = {}
    if chunk_ids:
        rows = await s.execute(
            select(Chunk.id, Document.title)
            .join(Document, Chunk.document_id == Document.id)
            .where(Chunk.id.in_(chunk_ids))
        )
        titles = {chunk_id: title for chunk_id, title in rows}
    return [
        ReviewItem(
            id=c.id,
            answer_id=a.id,
            author=c.author,
            platform=c.platform,
            created_at=_utc(c.created_at),
            updated_at=_utc(c.updated_at),
            status=c.status,
            text=c.text,
            approved_text=c.approved_text,
            reviewer=c.reviewer,
            reviewed_at=_utc(c.reviewed_at) if c.reviewed_at else None,
            acl=c.acl,
            question=a.question,
            answer=a.answer,
            not_found=a.status == "not_found",
            verified=(a.grounding or {}).get("verified"),
            sources=_sources(a, titles),
            reasons=reasons.get(a.id, []),
        )
        for c, a in pairs
    ]


def _sources(answer: Answer, titles: dict[str, str]) -> list[dict[str, Any]]:
    """The passages the answer used, numbered as in its prompt, with their text there (when the
    model was asked) and whether the shown answer cites them; then any cited passage not among
    them (answers logged before kbot recorded which passages were used). ``deleted``: the chunk
    is no longer in any document (deleted, or changed and re-ingested since)."""
    prompted = _prompt_sources(answer.messages)
    cited = {str(c.get("chunk_id", "")): c for c in answer.citations if c.get("chunk_id")}
    out: list[dict[str, Any]] = []
    for n, entry in enumerate((r for r in answer.retrieved if r.get("used")), 1):
        chunk_id = str(entry.get("chunk_id"))
        title, text = prompted.get(n, ("", ""))
        citation = cited.pop(chunk_id, None)
        out.append(
            {
                "n": n,
                "title": titles.get(chunk_id) or title or str(entry.get("source", "")),
                "source": str(entry.get("source", "")),
                "text": _snippet(text),
                "cited": citation is not None,
                "quote": str(citation.get("quote", "")) if citation else "",
                "deleted": chunk_id not in titles,
            }
        )
    for citation in [*cited.values(), *(c for c in answer.citations if not c.get("chunk_id"))]:
        out.append(
            {
                "n": citation.get("n"),
                "title": str(citation.get("title", "")),
                "source": str(citation.get("source", "")),
                "text": "",
                "cited": True,
                "quote": str(citation.get("quote", "")),
                "deleted": bool(citation.get("chunk_id")) and str(citation.get("chunk_id")) not in titles,
            }
        )
    return out


def _prompt_sources(messages: list[dict[str, str]]) -> dict[int, tuple[str, str]]:
    """Number → (title, text) of the sources in the prompt's last user turn."""
    turn = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")
    if not turn.startswith("Sources:\n"):
        return {}
    listed = turn.removeprefix("Sources:\n").rpartition("\n\nQuestion: ")[0]
    found: dict[int, tuple[str, str]] = {}
    for line in listed.splitlines():
        if match := _SOURCE.match(line):
            found[int(match.group(1))] = (match.group(2), match.group(3))
    return found


def _snippet(text: str) -> str:
    return text if len(text) <= SNIPPET else text[: SNIPPET - 1] + "…"
