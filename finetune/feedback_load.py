"""What the export reads: rated answers and usable corrections, and why the rest was left out.

The rules are those of ``finetune.export``'s docstring; this module applies the ones that decide,
row by row, whether a vote or a correction may be used at all (who gave it, whether a reviewer
approved it, whether the answer it is about was the model's, whether that answer's prompt held
restricted text). ``finetune.export`` builds the training rows from what is left.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from kbot.db import Database
from kbot.db.models import Answer, Chunk, Correction, Document, Vote
from kbot.settings import Settings
from knowledge.vectorstore import PUBLIC

ANONYMOUS_PREFIX = "anon-"  # the web chat's ids for visitors nobody signed in (bot.web.auth)
# What the model is told when nobody configured otherwise: the prompt a corrected "not found"
# answer is trained under, since no prompt was logged for it (no model was asked).
DEFAULT_SYSTEM_PROMPT: str = Settings.model_fields["system_prompt"].default
# Why a correction a reviewer has not approved is left out (finetune.review).
UNAPPROVED = {"pending": "correction awaiting review", "rejected": "rejected correction"}


@dataclass(frozen=True)
class ExportOptions:
    since: datetime | None = None  # only feedback given since then
    min_votes: int = 1
    max_votes_per_user: int = 200
    similarity: float = 0.9  # cosine at or above which two questions are the same question
    train_on_anonymous: bool = False  # Settings.train_on_anonymous: anonymous web feedback too
    system_prompt: str = DEFAULT_SYSTEM_PROMPT  # Settings.system_prompt: for corrected "not found" answers


@dataclass
class Rated:
    answer: Answer
    score: int = 0
    votes: int = 0


def is_anonymous(platform: str, person: str) -> bool:
    """Whether a vote's or correction's author is an anonymous web visitor."""
    return platform == "web" and person.startswith(ANONYMOUS_PREFIX)


def corrected_text(correction: Correction) -> str:
    """The text a reviewer approved: their edit, else the correction as written."""
    return correction.approved_text or correction.text


def not_found(answer: Answer) -> bool:
    """An answer that said the documents do not say (no model text to reject; its correction is
    what the documents lacked)."""
    return answer.status == "not_found" and answer.platform != "eval"


async def load(
    db: Database, options: ExportOptions
) -> tuple[dict[str, Rated], list[Correction], Counter[str]]:
    """Rated answers (by id), usable corrections and the drop counts of loading. Every usable
    correction's answer is among the rated ones (without votes, when it is a "not found" one:
    votes on those are never used)."""
    dropped: Counter[str] = Counter()
    async with db.session() as s:
        # Plain rows, not ORM objects: there can be hundreds of thousands of votes.
        vote_query = select(Vote.answer_id, Vote.platform, Vote.voter, Vote.value).order_by(
            Vote.updated_at, Vote.id
        )
        correction_query = select(Correction).order_by(Correction.updated_at, Correction.id)
        if options.since is not None:
            vote_query = vote_query.where(Vote.updated_at >= options.since)
            # A correction counts from when it became usable: written, or approved later.
            correction_query = correction_query.where(
                or_(Correction.updated_at >= options.since, Correction.reviewed_at >= options.since)
            )
        votes = list((await s.execute(vote_query)).all())
        corrections = list((await s.scalars(correction_query)).all())
        wanted = {v.answer_id for v in votes} | {c.answer_id for c in corrections}
        answers: dict[str, Answer] = {}
        ids = sorted(wanted)
        for start in range(0, len(ids), 5000):
            chunk = ids[start : start + 5000]
            for a in (await s.scalars(select(Answer).where(Answer.id.in_(chunk)))).all():
                answers[a.id] = a
        acls = await _chunk_acls(s, answers.values())
    rated: dict[str, Rated] = {}
    per_user: Counter[tuple[str, str]] = Counter()
    for vote in votes:
        if not options.train_on_anonymous and is_anonymous(vote.platform, vote.voter):
            dropped["vote by an anonymous web visitor"] += 1
            continue
        answer = answers.get(vote.answer_id)
        if answer is None or not _trainable(answer):
            dropped["vote on an answer made without the model"] += 1
            continue
        if _restricted(answer, acls):
            dropped["vote on an answer that used restricted documents"] += 1
            continue
        per_user[(vote.platform, vote.voter)] += 1
        if per_user[(vote.platform, vote.voter)] > options.max_votes_per_user:
            dropped["vote beyond the per-person cap"] += 1
            continue
        entry = rated.setdefault(answer.id, Rated(answer))
        entry.score += vote.value
        entry.votes += 1
    usable = []
    for correction in corrections:
        if reason := _unusable(correction, answers.get(correction.answer_id), acls, options):
            dropped[reason] += 1
            continue
        usable.append(correction)
        rated.setdefault(correction.answer_id, Rated(answers[correction.answer_id]))
    return rated, usable, dropped


def _unusable(
    correction: Correction, answer: Answer | None, acls: dict[str, list[str]], options: ExportOptions
) -> str | None:
    """Why ``correction`` must not be trained on; None when it may."""
    if not options.train_on_anonymous and is_anonymous(correction.platform, correction.author):
        return "correction by an anonymous web visitor"
    if correction.status != "approved":
        return UNAPPROVED.get(correction.status, "correction awaiting review")
    if answer is None or not (_trainable(answer) or not_found(answer)):
        return "correction of an answer made without the model"
    if _restricted(answer, acls):
        return "correction of an answer that used restricted documents"
    if correction.acl is not None and PUBLIC not in correction.acl:
        # Scoped to some groups (or nobody): an adapter answers everyone.
        return "correction not approved for everyone"
    return None


def _trainable(answer: Answer) -> bool:
    return answer.status == "ok" and bool(answer.messages) and answer.platform != "eval"


def _checked_chunks(answer: Answer) -> list[str]:
    """The chunks whose ACL decides: those in the prompt, or every one retrieved for answers
    logged before the answer log said which were used."""
    entries = (
        answer.retrieved if answer.restricted is None else [r for r in answer.retrieved if r.get("used")]
    )
    return [str(r.get("chunk_id")) for r in entries]


async def _chunk_acls(s: AsyncSession, answers: Iterable[Answer]) -> dict[str, list[str]]:
    """The ACL now of every chunk an answer's export depends on (unknown ids are absent)."""
    ids = sorted(
        {
            c
            for a in answers
            if (_trainable(a) or not_found(a)) and a.restricted is not True
            for c in _checked_chunks(a)
        }
    )
    acls: dict[str, list[str]] = {}
    for start in range(0, len(ids), 5000):
        query = (
            select(Chunk.id, Document.acl)
            .join(Document, Chunk.document_id == Document.id)
            .where(Chunk.id.in_(ids[start : start + 5000]))
        )
        acls.update({row.id: row.acl for row in (await s.execute(query)).all()})
    return acls


def _restricted(answer: Answer, acls: dict[str, list[str]]) -> bool:
    if answer.restricted:
        return True
    for chunk_id in _checked_chunks(answer):
        acl = acls.get(chunk_id)
        if acl is None:
            if answer.restricted is None:
                return True  # an old answer's passage that is gone: it cannot be shown to be public
        elif PUBLIC not in acl:
            return True
    return False
