"""What replaces a rejected answer: the passages' own sentences that answer the question, cited.

Each sentence of the given passages is scored by how much of the question it covers: the
question's content tokens (:func:`agent.grounding.content_tokens`: words, CJK characters and
bigrams), each weighted by its rarity among the candidate sentences (``days`` is everywhere,
``sick`` decides), a token found only around the sentence (its title, heading or the rest of its
passage: "lost laptop" for a passage on laptops that says "report a lost device") counting
:data:`CONTEXT_WEIGHT`. A question asking "how many / how much / 幾 / 多少 / 多久" prefers a
sentence with a number; a heading-like line (short, no sentence end, no number) counts little.

A sentence answers when it covers :data:`EXTRACT_MIN` of the question, or :data:`EXTRACT_LOW`
under a section heading the question names, with the question's rarest word the passages have
(a heading says what its section is about, so the rest of the question may be a paraphrase:
父母過世 for 父母喪亡; but "Leaving the company" does not name "paid sick leave"). With none
there is no answer (None: the caller says the documents do not say). Further sentences, from any passage, are
added while each covers at least :data:`GAIN_MIN` more of the question, up to
:data:`MAX_SENTENCES`.

The text quotes the sentences verbatim, in their passage's language, behind one lead-in in the
asker's: ``According to *Leave policy* [1]: "…"`` / ``根據《員工請假規定》[1]：「…」`` /
``根据《…》[1]：「…」``, one line per source.
"""

from __future__ import annotations

import math
import re
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from agent.grounding import ASKS_NUMBER, content_tokens, sentences
from agent.numbers import quantities
from knowledge.vectorstore import Hit

__all__ = [
    "CONTEXT_WEIGHT", "EXTRACT_LOW", "EXTRACT_MIN", "GAIN_MIN", "HEADING_MIN", "MAX_SENTENCES", "Extractive",
    "extractive_answer",
]  # fmt: skip

# Tuned on bench/devset (bench/devset_check.py): most answering sentences cover 0.7-1.0 of
# their question; the paraphrased rest 0.4-0.63, answered when their section heading is named
# (喪假, 報支, Accessories); for the unanswerable questions the best sentence covers 0.23-0.6
# under another heading. EXTRACT_MIN anywhere in 0.65-0.8, EXTRACT_LOW in 0.3-0.35 give the same.
EXTRACT_MIN = 0.7
EXTRACT_LOW = 0.35
HEADING_MIN = 0.5  # share of a section heading's tokens the question names
CONTEXT_WEIGHT = 0.5
GAIN_MIN = 0.2
MAX_SENTENCES = 3
NUMBERLESS = 0.8  # a sentence without a number, for a question that asks for one
HEADING_LIKE = 0.3

_END = re.compile(r"[.!?。！？；;:：]['\"”’」』)]*$")
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af\uf900-\ufaff]")


@dataclass(frozen=True)
class Extractive:
    """The answer ``text``; ``supporting``: its sources (1-based), in the order shown;
    ``quotes``: (source, sentence) pairs quoted; ``coverage``: share of the question covered."""

    text: str
    supporting: list[int] = field(default_factory=list)
    quotes: list[tuple[int, str]] = field(default_factory=list)
    coverage: float = 0.0


@dataclass(frozen=True)
class _Candidate:
    source: int  # 1-based
    order: int  # position in its passage
    text: str
    tokens: frozenset[str]
    context: frozenset[str]  # its document title, heading path and passage
    heading: frozenset[str]  # its own section heading
    prior: float  # NUMBERLESS / HEADING_LIKE factors


def extractive_answer(question: str, sources: Sequence[Hit], *, lang: str) -> Extractive | None:
    """The cited sentences of ``sources`` that best answer ``question``, led in in ``lang``
    (:func:`agent.grounding.language` of the question); None when no sentence answers it."""
    wanted = content_tokens(question)
    asks_number = bool(ASKS_NUMBER.search(question))
    candidates = [c for n, hit in enumerate(sources, 1) for c in _candidates(n, hit, asks_number)]
    if not wanted or not candidates:
        return None
    df = Counter(t for c in candidates for t in c.tokens | c.context)
    weight = {t: math.log(1 + (len(candidates) + 1) / (df[t] + 0.5)) for t in wanted if df[t]}
    # A question word no passage has weighs like a typical one that they have: it may be a
    # paraphrase ("daily meal limit" for "meals up to 60 EUR per day"), or the missing topic.
    typical = statistics.median(weight.values()) if weight else 1.0
    weight |= {t: typical for t in wanted if not df[t]}
    total = sum(weight.values())

    def coverage(chosen: Sequence[_Candidate]) -> float:
        said = set().union(*(c.tokens for c in chosen))
        around = set().union(*(c.context for c in chosen))
        got = sum(
            w * (1.0 if t in said else CONTEXT_WEIGHT if t in around else 0.0) for t, w in weight.items()
        )
        return got / total

    # The rarest question word the passages have: the one that tells what the question is about.
    telling_weight = max((weight[t] for t in wanted if df[t]), default=0.0)

    def answers(c: _Candidate) -> bool:
        covered = coverage([c])
        if covered >= EXTRACT_MIN:
            return True
        # A heading names the topic only with the question's telling word: "Leaving the company"
        # shares "leave" with "paid sick leave", but not "paid", which only one sentence has.
        named = c.heading & wanted
        telling = any(weight[t] >= telling_weight for t in named)
        return covered >= EXTRACT_LOW and telling and len(named) / len(c.heading) >= HEADING_MIN

    ranked = sorted(candidates, key=lambda c: (-coverage([c]) * c.prior, c.source, c.order))
    first = next((c for c in ranked if answers(c)), None)
    if first is None:
        return None
    chosen = [first]
    for c in ranked:
        if len(chosen) == MAX_SENTENCES:
            break
        # Another sentence must bring more of the question: the other half of "annual leave
        # and sick leave", not one more sentence about what is covered already.
        gain = coverage([*chosen, c]) - coverage(chosen)
        if c.prior == 1.0 and coverage([c]) >= EXTRACT_LOW and gain >= GAIN_MIN:
            chosen.append(c)
    return _render(chosen, sources, lang, coverage(chosen))


def _candidates(n: int, hit: Hit, asks_number: bool) -> list[_Candidate]:
    context = frozenset(content_tokens(f"{hit.title} {hit.heading} {hit.text}"))
    heading = frozenset(content_tokens(hit.heading.split(" > ")[-1]))
    found: list[_Candidate] = []
    for order, s in enumerate(sentences(hit.text)):
        tokens = frozenset(content_tokens(s.text))
        has_number = bool(quantities(s.text))
        prior = 1.0
        if not has_number and not _END.search(s.text) and len(tokens) <= 4:
            prior = HEADING_LIKE  # a heading or a label, not a statement
        elif asks_number and not has_number:
            prior = NUMBERLESS
        found.append(_Candidate(n, order, s.text, tokens, context, heading, prior))
    return found


def _render(chosen: list[_Candidate], sources: Sequence[Hit], lang: str, covered: float) -> Extractive:
    by_source: dict[int, list[_Candidate]] = {}
    for c in chosen:
        by_source.setdefault(c.source, []).append(c)
    lines: list[str] = []
    quotes: list[tuple[int, str]] = []
    for n, picked in by_source.items():
        picked.sort(key=lambda c: c.order)
        quotes += [(n, c.text) for c in picked]
        title = sources[n - 1].title or sources[n - 1].source
        lines.append(_lead_in(lang, title, n, [c.text for c in picked]))
    return Extractive("\n".join(lines), list(by_source), quotes, covered)


def _lead_in(lang: str, title: str, n: int, said: list[str]) -> str:
    cjk = bool(_CJK.search(said[0]))
    if lang.startswith("zh") or lang in ("ja", "ko"):
        body = ("" if cjk else " ").join(said).replace("「", "『").replace("」", "』")
        if lang == "ja":
            return f"『{title}』[{n}]によると：「{body}」"
        if lang == "ko":
            return f"《{title}》[{n}]에 따르면: 「{body}」"
        according = "根据" if lang == "zh-Hans" else "根據"
        return f"{according}《{title}》[{n}]：「{body}」"
    body = ("" if cjk else " ").join(said).replace('"', "'")
    return f'According to *{title}* [{n}]: "{body}"'
