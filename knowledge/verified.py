"""Verified answers: approved corrections answered from at once, before any retraining.

When a reviewer approves a correction (a better answer an employee wrote), the next person who
asks the same thing gets that text, cited as "verified answer, <date>", without waiting for the
nightly run — the annotation reply of Dify. The review queue calls :meth:`VerifiedAnswers.add`
on approval and :meth:`VerifiedAnswers.remove` on rejection; the ``corrections`` table stays the
record of what was approved.

Storage: one point per correction in the same vector store as the documents, under the tenant
:data:`TENANT` (``~verified``). No collection can have that name (``check_collection_name``
refuses ``~``), so nobody ingests into it, searches it as a collection or sees it listed. The
store's port filters on exactly two keys, ``collection`` and ``acl``; a verified answer must be
both asked in one of its collections and readable by the asker, so its ``acl`` holds one token
``<collection>|<group>`` per pair (neither names nor groups may contain ``|``). A search then asks
for the pairs of the asked collections with the asker's groups and ``*``: the documents' ACL rule,
``acl ∩ (groups ∪ {"*"}) ≠ ∅``, per collection. One point per correction makes re-adding an
upsert and removing one delete.

Matching: a wrong match gives an employee someone else's answer, which is worse than no match, so
a question matches only when it asks the same thing (see :func:`same_question`).
"""

from __future__ import annotations

import asyncio
import re
import unicodedata
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import cast

from sqlalchemy import select

from kbot.db import Database
from kbot.db.models import Answer, Chunk, Document
from kbot.errors import InvalidNameError, KnowledgeError
from knowledge.base import KnowledgeBase
from knowledge.catalog import check_collection_name, check_groups
from knowledge.sparse import SparseVector, keywords, token_index, tokenize
from knowledge.vectorstore import PUBLIC, ChunkPayload, ChunkRecord, Hit, SearchQuery

__all__ = ["TENANT", "VerifiedAnswer", "VerifiedAnswers", "answer_scope", "same_question"]

TENANT = "~verified"
SOURCE = "verified:"  # + correction id: the citation's source, and the point's key for deletes
_PAIR = "|"
_NAMESPACE = uuid.UUID("6f1d3c52-9a4e-4c1b-8f0e-2b7d5a9c3e11")
CANDIDATES = 5  # nearest verified questions examined per question

# Tuned on the dev set in tests/test_verified.py (EN: 12 verified questions, 35 paraphrases, 42
# near-misses; zh-Hant: 4, 10, 15). Paraphrases that pass the word tests of same_question score
# 0.869-0.998; the near-misses that pass them 0.756 and 0.828 (a qualifier dropped: "days of
# leave" for "days of sick leave"). 0.86 keeps them out; 25 of the 35 paraphrases match.
COSINE_MIN = 0.86
# The dense test only when MiniLM reads nearly all of both questions: on Chinese it sees mostly
# [UNK] (婚假/喪假/病假可以請幾天 all embed alike, cosine 1.0), and a short Chinese question can
# still reach knowledge.base's 0.5 coverage (婚假有幾天？).
READABLE = 0.9
# Else the share of content words (CJK: characters) the two questions share (Jaccard). zh-Hant
# paraphrases that pass the word tests: 0.75-1.0 (all 10 match); the near-miss that passes them
# 0.43.
OVERLAP_MIN = 0.7

# Function words of questions (besides knowledge.sparse's): "Can I…", "Am I allowed to…" and
# "Is it possible to…" ask the same. Negations, modals of obligation, before/after, over/under
# stay: they change the question.
# fmt: off
_FUNCTION_WORDS = frozenset([
    "am", "do", "does", "did", "done", "can", "could", "i", "me", "my", "mine", "we", "us", "our",
    "there", "here", "please", "any", "some", "each", "every", "per", "much", "many", "get", "got",
    "allowed", "able", "possible", "s", "t", "d", "ll", "re", "ve", "m", "would", "like", "know",
    "tell", "about", "into", "so", "if", "also", "just",
])
# fmt: on
_CJK_FUNCTION = frozenset("需須要否是請嗎呢該應得能")
# Quantities and calendar names: "after 2 days" ≠ "after 3 days", "Mondays" ≠ "Fridays". A
# question whose specifics differ in any way (also "10" vs "ten") is another question.
_DIGITS = re.compile(r"\d+(?:[.:]\d+)*")
_CJK_NUMERALS = re.compile(r"[零〇一二兩两三四五六七八九十百千萬万億亿半]+")
# fmt: off
_SPECIFIC_WORDS = frozenset([
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "fifteen", "twenty", "thirty", "forty", "fifty", "hundred", "thousand",
    "million", "half", "twice", "double", "first", "second", "third", "fourth", "fifth", "monday",
    "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday", "weekend", "weekday",
    "january", "february", "march", "april", "june", "july", "august", "september", "october",
    "november", "december",
])
# fmt: on


@dataclass(frozen=True)
class VerifiedAnswer:
    correction_id: int
    question: str  # the question the correction answers
    text: str  # the approved answer text
    collections: list[str]  # the collections the corrected answer was asked in
    acl: list[str]  # who may be answered from it (PUBLIC "*" = everyone)
    approved_at: datetime
    score: float = 0.0  # match strength when returned by match(): cosine, or word overlap

    @property
    def source(self) -> str:
        return f"{SOURCE}{self.correction_id}"

    @property
    def point_id(self) -> str:
        return str(uuid.uuid5(_NAMESPACE, self.source))


class VerifiedAnswers:
    """The verified answers of one knowledge base (its vector store, its embedder)."""

    def __init__(self, kb: KnowledgeBase) -> None:
        self._kb = kb

    async def add(self, answer: VerifiedAnswer) -> None:
        """Index ``answer``, replacing what was indexed for its correction before. An answer
        nobody may read (empty ``acl``) is only removed."""
        if not answer.text.strip() or not answer.question.strip():
            raise KnowledgeError(
                f"Verified answer {answer.correction_id} needs both its question and its text."
            )
        if not answer.collections:
            raise KnowledgeError(
                f"Verified answer {answer.correction_id} names no collection, so no question could reach it."
            )
        pairs = _pairs(answer.collections, _check_acl(answer.acl))
        if not pairs:
            await self.remove(answer.correction_id)
            return
        store, embedder = self._kb.store, self._kb.embedder
        await store.prepare(embedder.dimension)
        dense = (await asyncio.to_thread(embedder.embed, [answer.question]))[0]
        payload = {
            "collection": TENANT,
            "source": answer.source,
            # Returned by searches: what match() rebuilds the answer from.
            "title": answer.question,
            "heading": answer.approved_at.isoformat(),
            "text": answer.text,
            "acl": pairs,
            "ordinal": 0,
            # For people reading the store.
            "correction_id": answer.correction_id,
            "question": answer.question,
            "collections": sorted(set(answer.collections)),
            "groups": sorted(set(answer.acl)),
            "approved_at": answer.approved_at.isoformat(),
        }
        record = ChunkRecord(
            answer.point_id, dense, _lexical_vector(answer.question), cast(ChunkPayload, payload)
        )
        await store.upsert([record])

    async def count(self) -> int:
        """How many verified answers the vector store holds."""
        await self._kb.store.prepare(self._kb.embedder.dimension)
        return await self._kb.store.count(TENANT)

    async def remove(self, correction_id: int) -> None:
        """Stop answering from ``correction_id`` (rejected after approval, say); idempotent."""
        await self._kb.store.prepare(self._kb.embedder.dimension)
        await self._kb.store.delete_document(TENANT, f"{SOURCE}{correction_id}")

    async def match(
        self, question: str, collections: Sequence[str], groups: Sequence[str]
    ) -> VerifiedAnswer | None:
        """The verified answer to ``question`` asked in ``collections`` that ``groups`` may read,
        if one asks the same thing; with ``score`` set."""
        allowed = _pairs(collections, [PUBLIC, *check_groups(groups)])
        if not allowed or not question.strip():
            return None
        store, embedder = self._kb.store, self._kb.embedder
        await store.prepare(embedder.dimension)
        readable = embedder.coverage(question) >= READABLE
        if readable:
            vector = (await asyncio.to_thread(embedder.embed, [question]))[0].tolist()
            query = SearchQuery(collections=[TENANT], groups=allowed, limit=CANDIDATES, dense=vector)
        else:
            lexical = _lexical_vector(question)
            if not lexical.indices:
                return None
            query = SearchQuery(collections=[TENANT], groups=allowed, limit=CANDIDATES, sparse=lexical)
        for hit in sorted(await store.search(query), key=lambda h: (-h.score, h.chunk_id)):
            candidate = _decode(hit)
            if readable and embedder.coverage(candidate.question) < READABLE:
                continue  # a Chinese verified question: its vector says nothing
            score = same_question(question, candidate, cosine=hit.score if readable else None)
            if score is not None:
                # As retrieval does: a question asked in a collection that does not exist fails.
                await self._kb.catalog.require(collections)
                return replace(candidate, score=score)
        return None


def same_question(asked: str, verified: VerifiedAnswer, *, cosine: float | None) -> float | None:
    """The match strength when ``asked`` asks what ``verified`` answers, else None.

    Both tests first: the quantities and calendar names are the same, and every content word of
    ``asked`` is in the verified question or its answer (the near-misses swap or add one: "annual"
    for "sick", "Mondays" for "Fridays", "part-time", "in December", "after 10:00"). Then
    ``cosine`` (given when MiniLM reads both questions) reaches :data:`COSINE_MIN`, which catches
    a dropped qualifier; else the content-word overlap reaches :data:`OVERLAP_MIN`.
    """
    if _specifics(asked) != _specifics(verified.question):
        return None
    mine, theirs = _content(asked), _content(verified.question)
    if mine - theirs - _content(verified.text):
        return None
    if cosine is not None:
        return cosine if cosine >= COSINE_MIN else None
    overlap = len(mine & theirs) / max(1, len(mine | theirs))
    return overlap if overlap >= OVERLAP_MIN else None


async def answer_scope(db: Database, answer: Answer) -> list[str]:
    """Who may read a logged answer: ``["*"]`` (everyone), some groups, or ``[]`` (nobody).

    Decided by the sources it used (``retrieved`` entries with ``"used": true``; a verified
    answer's entry carries its own ``acl``): all public → everyone; else only the groups allowed
    to read every restricted one. An answer marked restricted (restricted text reached it through
    the thread's history) without a restricted source it used has an unknown scope → nobody. A used
    passage whose document is gone counts as public only if the answer was logged as not
    restricted (it was public then); else its scope is unknown → nobody.
    """
    used = [r for r in answer.retrieved if r.get("used")]
    acls: list[list[str]] = []
    chunk_ids: list[str] = []
    for entry in used:
        acl = entry.get("acl")
        if entry.get("verified") is not None and isinstance(acl, list):
            acls.append([str(g) for g in acl])
        else:
            chunk_ids.append(str(entry.get("chunk_id")))
    if chunk_ids:
        async with db.session() as s:
            rows = await s.execute(
                select(Chunk.id, Document.acl)
                .join(Document, Chunk.document_id == Document.id)
                .where(Chunk.id.in_(chunk_ids))
            )
            known = {row.id: list(row.acl) for row in rows}
        for chunk_id in chunk_ids:
            if chunk_id in known:
                acls.append(known[chunk_id])
            elif answer.restricted is not False:
                return []
    restricted = [set(acl) for acl in acls if PUBLIC not in acl]
    if not restricted:
        return [] if answer.restricted else [PUBLIC]
    return sorted(set.intersection(*restricted))


def _check_acl(acl: Sequence[str]) -> list[str]:
    return sorted({PUBLIC} & set(acl)) + check_groups([g for g in acl if g != PUBLIC])


def _pairs(collections: Sequence[str], groups: Sequence[str]) -> list[str]:
    for name in collections:
        check_collection_name(name)
    for group in groups:
        if _PAIR in group:  # check_groups refuses it too; PUBLIC is the one group it does not see
            raise InvalidNameError(f"Invalid group name {group!r}: '|' is not allowed.")
    return sorted({f"{c}{_PAIR}{g}" for c in collections for g in groups})


def _decode(hit: Hit) -> VerifiedAnswer:
    pairs = [token.partition(_PAIR) for token in hit.acl]
    return VerifiedAnswer(
        correction_id=int(hit.source.removeprefix(SOURCE)),
        question=hit.title,
        text=hit.text,
        collections=sorted({c for c, _, _ in pairs}),
        acl=sorted({g for _, _, g in pairs}),
        approved_at=datetime.fromisoformat(hit.heading),
    )


def _lexical_vector(text: str) -> SparseVector:
    """Retrieval's tokens (words, CJK bigrams) and content characters: two Chinese paraphrases
    often share characters but few bigrams (婚假有幾天 / 結婚可以請幾天婚假)."""
    indices = sorted({token_index(t) for t in [*tokenize(text), *keywords(text)]})
    return SparseVector(indices=indices, values=[1.0] * len(indices))


def _content(text: str) -> set[str]:
    return {
        _stem(word)
        for word in keywords(text)
        if word not in _FUNCTION_WORDS and word not in _CJK_FUNCTION and not _DIGITS.fullmatch(word)
    }


def _stem(word: str) -> str:
    """Enough to let "approved"/"approve", "expenses"/"expense", "remotely"/"remote" meet; the
    same on both sides, so it need not be linguistically right."""
    for suffix, replacement in (("ies", "y"), ("ied", "y"), ("ing", ""), ("ed", ""), ("ly", ""), ("s", "")):
        if word.endswith(suffix) and len(word) > len(suffix) + 2 and not word.endswith("ss"):
            word = word[: -len(suffix)] + replacement
            break
    return word[:-1] if word.endswith("e") and len(word) > 3 else word


def _specifics(text: str) -> set[str]:
    text = unicodedata.normalize("NFKC", text).lower()
    found = {m.replace(",", "") for m in _DIGITS.findall(re.sub(r"(?<=\d),(?=\d{3})", "", text))}
    found |= set(_CJK_NUMERALS.findall(text))
    for word in re.findall(r"[a-z]+", text):
        name = word if word in _SPECIFIC_WORDS else word.removesuffix("s")  # "Fridays"
        if name in _SPECIFIC_WORDS:
            found.add(name)
    return found
