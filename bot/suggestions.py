"""What to offer someone who opens kbot: the questions people ask most, and their own recent ones.

Suggested prompts are other people's questions, shown to anyone in the scope, so only questions
that were answered from documents open to everyone, asked by at least :data:`MIN_ASKERS`
different people, in the scope's collections, qualify: a question one person asked in private
never becomes a suggestion. With too few such questions yet, the scope's documents fill in.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from finetune.export import normalise
from kbot.db import Database
from kbot.db.models import Answer, Document, Vote
from knowledge.vectorstore import PUBLIC

MIN_ASKERS = 2
LOOKBACK = timedelta(days=90)
SCANNED = 5000  # the latest answers read; plenty for a per-scope top four


def _normal(question: str) -> str:
    """The export's grouping key, less the end punctuation people vary ("…get?" / "…get ?")."""
    return normalise(question).rstrip("?!.。 ")


async def most_asked(db: Database, collections: Sequence[str], *, limit: int = 4) -> list[str]:
    """Up to ``limit`` questions for a scope of ``collections``, most asked first."""
    scope = set(collections)
    since = datetime.now(UTC) - LOOKBACK
    async with db.session() as s:
        rows = await s.execute(
            select(Answer.question, Answer.asker, Answer.collections, Answer.restricted)
            .where(Answer.status == "ok", Answer.created_at >= since)
            .order_by(Answer.created_at.desc())
            .limit(SCANNED)
        )
        askers: defaultdict[str, set[str]] = defaultdict(set)
        wordings: defaultdict[str, Counter[str]] = defaultdict(Counter)
        for question, asker, asked_in, restricted in rows:
            if restricted is not False or not set(asked_in) <= scope:
                continue
            key = _normal(question)
            askers[key].add(asker)
            wordings[key][question.strip()] += 1
        counts = Counter({k: len(v) for k, v in askers.items() if len(v) >= MIN_ASKERS})
        # Each question as people write it most (on a tie, as it was first written).
        found = [
            max(reversed(wordings[k]), key=wordings[k].__getitem__) for k, _ in counts.most_common(limit)
        ]
        if len(found) < limit:
            documents = await s.execute(
                select(Document.title, Document.acl)
                .where(Document.collection.in_(sorted(scope)))
                .order_by(Document.updated_at.desc())
                .limit(100)
            )
            for title, acl in documents:
                prompt = f"What does “{title.strip()}” say?"
                if len(found) < limit and title.strip() and PUBLIC in acl and prompt not in found:
                    found.append(prompt)
        return found


@dataclass(frozen=True)
class Asked:
    answer_id: str
    question: str
    at: datetime
    vote: int  # the asker's live vote on the answer: +1, -1, 0 for none
    status: str


async def recent_questions(db: Database, platform: str, asker: str, *, limit: int = 5) -> list[Asked]:
    """The person's latest questions on ``platform``, each with their own vote on its answer."""
    async with db.session() as s:
        answers = list(
            await s.execute(
                select(Answer.id, Answer.question, Answer.created_at, Answer.status)
                .where(Answer.platform == platform, Answer.asker == asker)
                .order_by(Answer.created_at.desc())
                .limit(limit)
            )
        )
        ids = [a.id for a in answers]
        votes = dict(
            (
                await s.execute(
                    select(Vote.answer_id, Vote.value).where(Vote.answer_id.in_(ids), Vote.voter == asker)
                )
            ).all()
        )
    return [Asked(a.id, a.question, a.created_at, int(votes.get(a.id, 0)), a.status) for a in answers]
