"""Numbered citations: which sources an answer used, and the sentence to quote from each."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TypedDict

from knowledge.sparse import tokenize
from knowledge.vectorstore import Hit

_MARK = re.compile(r"\[(\d{1,2})\]")
_SENTENCE = re.compile(r"[^.!?。！？\n]+[.!?。！？]?")


class Citation(TypedDict):
    n: int
    source: str
    title: str
    quote: str
    chunk_id: str


def cited_numbers(answer: str, available: int) -> list[int]:
    """The [n] markers in ``answer`` that name one of the ``available`` sources, in order."""
    seen: list[int] = []
    for match in _MARK.finditer(answer):
        n = int(match.group(1))
        if 1 <= n <= available and n not in seen:
            seen.append(n)
    return seen


def best_quote(text: str, against: str, limit: int = 300) -> str:
    """The sentence of ``text`` sharing most words (or CJK bigrams) with ``against``."""
    wanted = set(tokenize(against))
    sentences = [s.strip() for s in _SENTENCE.findall(text) if s.strip()]
    if not sentences:
        return text[:limit]
    best: str = max(sentences, key=lambda s: len(wanted & set(tokenize(s))))
    return best if len(best) <= limit else best[: limit - 1] + "…"


def build_citations(answer: str, question: str, sources: Sequence[Hit]) -> list[Citation]:
    """Citations for the sources the answer marked; the first source when it marked none.

    Small models often forget the [n] markers; the passage ranked first is still what the
    answer was built on, and users must be able to check it.
    """
    numbers = cited_numbers(answer, len(sources)) or ([1] if sources else [])
    return [
        Citation(
            n=n,
            source=sources[n - 1].source,
            title=sources[n - 1].title,
            quote=best_quote(sources[n - 1].text, f"{question} {answer}"),
            chunk_id=sources[n - 1].chunk_id,
        )
        for n in numbers
    ]
