"""Split a loaded document into chunks measured in tokens of the embedding model.

Chunks never cross a section (heading) boundary, prefer to end at a paragraph, then at a
sentence (Western or CJK punctuation), and only cut inside a sentence when one sentence alone
exceeds the budget. Each chunk is embedded with its document title and heading path in front
(``Handbook > Leave > Sick leave``) because a passage often only makes sense under its heading;
that prefix counts against the budget. Consecutive chunks of one section share up to
``overlap`` tokens of whole trailing sentences so a fact split across a boundary is still
found whole in one of them.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from knowledge.document import LoadedDocument

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# Bump when the chunking rules change: stored documents are then re-chunked on next ingest.
CHUNKER_VERSION = 2

# A sentence ends at . ! ? followed by space, or at CJK full stops (no space follows those).
_SENTENCE = re.compile(r".+?(?:[.!?](?:\s+|$)|[。！？；]\s*|$)", re.S)
# CJK letters and punctuation: text on both sides of a join is glued without a space.
_CJK_CHARS = "\u3000-\u30ff\u3400-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef"
_CJK_END = re.compile(f"[{_CJK_CHARS}]$")
_CJK_START = re.compile(f"^[{_CJK_CHARS}]")
_CJK_CHAR = re.compile(f"[{_CJK_CHARS}]")


@dataclass(frozen=True)
class ChunkDraft:
    """A chunk before it has an id: ``text`` is what users see, ``embed_text`` what is embedded."""

    ordinal: int
    heading_path: tuple[str, ...]
    text: str
    embed_text: str
    token_count: int


@dataclass(frozen=True)
class _Unit:
    text: str
    tokens: int
    paragraph: int


class Chunker:
    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_tokens: int, overlap: int) -> None:
        if overlap >= max_tokens:
            raise ValueError("overlap must be smaller than max_tokens")
        self._tokenizer = tokenizer
        self._max = max_tokens
        self._overlap = overlap

    def chunk(self, document: LoadedDocument) -> list[ChunkDraft]:
        drafts: list[ChunkDraft] = []
        for section in document.sections:
            paragraphs = [p.strip() for p in section.text.split("\n\n") if p.strip()]
            if not paragraphs:
                continue
            crumbs = [document.title, *section.heading_path]
            if len(crumbs) > 1 and crumbs[0] == crumbs[1]:
                crumbs.pop(0)  # a Markdown "# Title" is both the title and the first heading
            prefix = " > ".join(c for c in crumbs if c)
            prefix_tokens = self._count([prefix])[0] + 1 if prefix else 0
            # A pathological heading must not starve the body; keep at least half the budget.
            if prefix_tokens > self._max // 2:
                prefix, prefix_tokens = "", 0
            budget = self._max - prefix_tokens
            for body, tokens in self._pack(self._units(paragraphs, budget), budget):
                embed_text = f"{prefix}\n{body}" if prefix else body
                drafts.append(
                    ChunkDraft(len(drafts), section.heading_path, body, embed_text, tokens + prefix_tokens)
                )
        return drafts

    def _count(self, texts: list[str]) -> list[int]:
        ids = self._tokenizer(texts, add_special_tokens=False)["input_ids"]
        return [len(x) for x in ids]

    def _units(self, paragraphs: list[str], budget: int) -> list[_Unit]:
        units: list[_Unit] = []
        for index, (paragraph, tokens) in enumerate(zip(paragraphs, self._count(paragraphs), strict=True)):
            if tokens <= budget:
                units.append(_Unit(paragraph, tokens, index))
                continue
            sentences = [m.group(0) for m in _SENTENCE.finditer(paragraph) if m.group(0).strip()]
            # A paragraph that is one sentence (a long line without full stops) is counted already.
            counts = [tokens] if sentences == [paragraph] else self._count(sentences)
            for sentence, count in zip(sentences, counts, strict=True):
                if count <= budget:
                    units.append(_Unit(sentence, count, index))
                else:
                    units.extend(_Unit(t, n, index) for t, n in self._windows(sentence, budget))
        return units

    def _windows(self, sentence: str, budget: int) -> list[tuple[str, int]]:
        """Cut an over-long sentence into token windows that start and end between words."""
        offsets = self._tokenizer(sentence, add_special_tokens=False, return_offsets_mapping=True)[
            "offset_mapping"
        ]
        n = len(offsets)
        boundary = [
            i == 0
            or not (sentence[offsets[i][0] - 1 : offsets[i][0]].isalnum())
            or _is_cjk(sentence, i, offsets)
            for i in range(n)
        ]

        def snap(index: int, floor: int) -> int:
            # Move back to a word start, unless the word is longer than the whole window.
            back = index
            while back > floor and not boundary[back]:
                back -= 1
            return back if back > floor else index

        windows = []
        start = 0
        while start < n:
            end = n if start + budget >= n else snap(start + budget, start)
            windows.append((sentence[offsets[start][0] : offsets[end - 1][1]], end - start))
            if end >= n:
                break
            start = max(snap(end - self._overlap, start), start + 1) if self._overlap else end
        return windows

    def _pack(self, units: list[_Unit], budget: int) -> list[tuple[str, int]]:
        chunks: list[tuple[str, int]] = []
        current: list[_Unit] = []
        size = 0
        for unit in units:
            if current and size + unit.tokens > budget:
                chunks.append((_join(current), size))
                current = self._carry_over(current, budget - unit.tokens)
                size = sum(u.tokens for u in current)
            current.append(unit)
            size += unit.tokens
        if current:
            chunks.append((_join(current), size))
        return chunks

    def _carry_over(self, previous: list[_Unit], room: int) -> list[_Unit]:
        carried: list[_Unit] = []
        total = 0
        for unit in reversed(previous[1:]):  # never carry the whole previous chunk
            if total + unit.tokens > min(self._overlap, room):
                break
            carried.insert(0, unit)
            total += unit.tokens
        return carried


def _join(units: list[_Unit]) -> str:
    text = units[0].text.strip()
    for before, unit in itertools.pairwise(units):
        piece = unit.text.strip()
        if unit.paragraph != before.paragraph:
            text += "\n\n" + piece
        elif _CJK_END.search(text) and _CJK_START.search(piece):
            text += piece
        else:
            text += " " + piece
    return text


def _is_cjk(text: str, index: int, offsets: list[tuple[int, int]]) -> bool:
    # Matched in place: a slice would copy the rest of the text for each token, which made a
    # long line without sentence ends quadratic (a 5 MB one-line file took minutes).
    return bool(_CJK_CHAR.match(text, offsets[index][0]))
