"""The vote log: 👍/👎 and corrections on logged answers, the raw material of the learning loop.

Every chat platform records feedback here, linked to the ``answers`` row it is about. The rules:

- A person has one live vote per answer (``votes`` is unique on ``answer_id, voter``): voting
  again replaces the value; taking a reaction back deletes the vote only if it is still that
  reaction's value and came from a reaction (a 👍 reaction taken back must not erase a click).
- A comment rides along with a vote (Teams' feedback dialog). A new vote without a comment keeps
  the old comment when the value is unchanged and drops it when the value flips.
- A correction (a better answer written by a person) is one per person per answer; editing it
  replaces the text, and a changed text is reviewed again (``finetune.review``): back to
  ``pending``, its earlier approval (edited text, reviewer, ACL scope) gone.

Voters are platform ids (Slack ``U…``, Teams AAD object ids); ``platform`` says which.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import case, delete, null, select
from sqlalchemy.ext.asyncio import AsyncSession

from kbot.db import Database
from kbot.db.models import Answer, Correction, Vote, utcnow
from kbot.errors import FeedbackError

ORIGINS = ("reaction", "button", "feedback", "web")
MAX_TEXT = 20_000


@dataclass(frozen=True)
class LiveVote:
    answer_id: str
    platform: str
    voter: str
    value: int
    origin: str
    comment: str
    updated_at: datetime


@dataclass(frozen=True)
class StoredCorrection:
    answer_id: str
    platform: str
    author: str
    text: str
    updated_at: datetime
    id: int = 0
    status: str = "pending"  # pending | approved | rejected (finetune.review)


class VoteLog:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def vote(
        self,
        *,
        answer_id: str,
        platform: str,
        voter: str,
        value: int,
        origin: str,
        comment: str = "",
        at: datetime | None = None,
    ) -> None:
        """Record ``voter``'s live vote (+1 or -1) on an answer, replacing any earlier one.

        ``at``: when it was given, for a vote written late (kept on disk during an outage): it
        then replaces only a vote older than that."""
        if value not in (1, -1):
            raise FeedbackError(f"A vote is +1 or -1, not {value!r}.")
        if origin not in ORIGINS:
            raise FeedbackError(f"Unknown vote origin {origin!r}; expected one of {', '.join(ORIGINS)}.")
        comment = comment.strip()[:MAX_TEXT]
        now = at or utcnow()
        stmt = self._db.insert(Vote).values(
            answer_id=answer_id,
            platform=platform,
            voter=voter,
            value=value,
            origin=origin,
            comment=comment,
            created_at=now,
            updated_at=now,
        )
        new = stmt.excluded
        stmt = stmt.on_conflict_do_update(
            index_elements=["answer_id", "voter"],
            set_={
                "value": new.value,
                # The same value again (a 👍 reaction after a 👍 click) keeps where the vote came from.
                "origin": case((Vote.value == new.value, Vote.origin), else_=new.origin),
                "updated_at": new.updated_at,
                "comment": case(
                    (new.comment != "", new.comment), (Vote.value == new.value, Vote.comment), else_=""
                ),
            },
            # A late write replaces only what is older; a live one always wins (replicas' clocks
            # may differ a little, and the person's latest click is the truth).
            where=Vote.updated_at <= new.updated_at if at is not None else None,
        )
        async with self._db.session() as s:
            await _require_answer(s, answer_id)
            await s.execute(stmt)

    async def unvote(
        self,
        *,
        answer_id: str,
        voter: str,
        value: int | None = None,
        origin: str | None = None,
        at: datetime | None = None,
    ) -> bool:
        """Delete ``voter``'s vote on an answer — only if it is ``value`` and came from ``origin``,
        when given (taking back a reaction must not erase a button click), and not newer than
        ``at``. True if one went."""
        stmt = delete(Vote).where(Vote.answer_id == answer_id, Vote.voter == voter)
        if at is not None:
            stmt = stmt.where(Vote.updated_at <= at)
        if value is not None:
            stmt = stmt.where(Vote.value == value)
        if origin is not None:
            stmt = stmt.where(Vote.origin == origin)
        async with self._db.session() as s:
            result = await s.execute(stmt)
        return bool(getattr(result, "rowcount", 0))

    async def correct(
        self, *, answer_id: str, platform: str, author: str, text: str, at: datetime | None = None
    ) -> int | None:
        """Store ``author``'s better answer, replacing their earlier correction of the same answer
        (only one older than ``at``, when given). Its id; None when a late write found a newer one."""
        text = text.strip()
        if not text:
            raise FeedbackError("A correction needs some text.")
        if len(text) > MAX_TEXT:
            raise FeedbackError(f"A correction may be at most {MAX_TEXT:,} characters long.")
        now = at or utcnow()
        stmt = self._db.insert(Correction).values(
            answer_id=answer_id, platform=platform, author=author, text=text, created_at=now, updated_at=now
        )
        new = stmt.excluded
        # What a reviewer approved was the old text: a new one needs a new review. The same text
        # again (a resubmitted form, a replayed spool) keeps the review it had.
        changed = Correction.text != new.text
        stmt = stmt.on_conflict_do_update(
            index_elements=["answer_id", "author"],
            set_={
                "text": new.text,
                "updated_at": new.updated_at,
                "status": case((changed, "pending"), else_=Correction.status),
                "approved_text": case((changed, null()), else_=Correction.approved_text),
                "reviewer": case((changed, ""), else_=Correction.reviewer),
                "reviewed_at": case((changed, null()), else_=Correction.reviewed_at),
                "acl": case((changed, null()), else_=Correction.acl),
            },
            where=Correction.updated_at <= new.updated_at if at is not None else None,
        ).returning(Correction.id)
        async with self._db.session() as s:
            await _require_answer(s, answer_id)
            written: int | None = (await s.execute(stmt)).scalar_one_or_none()
        return written

    async def votes(self, answer_id: str | None = None) -> list[LiveVote]:
        """Live votes, oldest change first; of one answer when ``answer_id`` is given."""
        stmt = select(Vote).order_by(Vote.updated_at, Vote.id)
        if answer_id is not None:
            stmt = stmt.where(Vote.answer_id == answer_id)
        async with self._db.session() as s:
            rows = (await s.scalars(stmt)).all()
        return [
            LiveVote(r.answer_id, r.platform, r.voter, r.value, r.origin, r.comment, r.updated_at)
            for r in rows
        ]

    async def corrections(self, answer_id: str | None = None) -> list[StoredCorrection]:
        stmt = select(Correction).order_by(Correction.updated_at, Correction.id)
        if answer_id is not None:
            stmt = stmt.where(Correction.answer_id == answer_id)
        async with self._db.session() as s:
            rows = (await s.scalars(stmt)).all()
        return [
            StoredCorrection(r.answer_id, r.platform, r.author, r.text, r.updated_at, r.id, r.status)
            for r in rows
        ]


async def _require_answer(session: AsyncSession, answer_id: str) -> None:
    if await session.get(Answer, answer_id) is None:
        raise FeedbackError(f"There is no answer {answer_id!r} to give feedback on.")
