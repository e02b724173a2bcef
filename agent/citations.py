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


def build_citations(
    numbers: Sequence[int],
    question: str,
    answer: str,
    sources: Sequence[Hit],
    quotes: Sequence[tuple[int, str]] = (),
) -> list[Citation]:
    """Citations for the sources ``numbers`` (1-based) name: the passages that support the final
    text, as the grounding check or the extractive answer found them, never a default. The quote is
    the text the answer took from that source when given (``quotes``), else its sentence closest
    to the question and the answer."""
    taken: dict[int, list[str]] = {}
    for n, text in quotes:
        taken.setdefault(n, []).append(text)
    return [
        Citation(
            n=n,
            source=sources[n - 1].source,
            title=sources[n - 1].title,
            quote=" ".join(taken[n])
            if n in taken
            else best_quote(sources[n - 1].text, f"{question} {answer}"),
            chunk_id=sources[n - 1].chunk_id,
        )
        for n in numbers
        if 1 <= n <= len(sources)
    ]
