"""The grounding check: is every claim of an answer backed by the passages it was given?

An answer is split into sentences (``. ! ?`` before a space, ``。！？；``, line breaks, list
items). A sentence is judged against the passages its ``[n]`` markers name, or, when it names
none, against the passage it matches best. It is supported when

- every quantity it states (:mod:`agent.numbers`: ``ten days`` = ``10 days`` = ``十天``; ``16
  days`` ≠ ``16 weeks``) appears in those passages, and
- at least :data:`SUPPORT_MIN` of its content tokens (the same tokens as retrieval: words, CJK
  characters and CJK bigrams; numbers left out) appear in them. Each ``[n]`` on its own must
  hold :data:`MARKER_MIN` of them, or a quantity of the sentence.

A sentence with no number and fewer than :data:`MIN_CLAIM_TOKENS` content tokens ("Yes.", "Here
is what I found:") claims nothing and is exempt; one with a number but almost no words ("10
days [1].") is judged through the question: its passage must be one of those that match the
question best, and hold the number. An answer needs at least one supported claim.

The whole answer must be in the asker's language (:func:`language`: Chinese or not by the share
of CJK characters; Traditional or Simplified by ~340 characters that differ; a question with
none of them accepts either). Text quoted from a passage (inside ``"…"``, ``「…」``, ``《…》`` or
``*…*``) is left out of that test: a quote stays in its passage's language. Degenerate output
(:func:`degenerate`) is rejected whatever its passages say.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from agent.hanzi import SIMPLIFIED, TO_TRADITIONAL, TRADITIONAL
from agent.numbers import Quantity, fold, quantities, without_quantities
from knowledge.sparse import keywords, tokenize
from knowledge.vectorstore import Hit

__all__ = [
    "ASKS_NUMBER", "MARKER_MIN", "MIN_CLAIM_TOKENS", "NEAR_BEST", "SUPPORT_MIN", "Sentence", "Verdict",
    "accepts", "check", "content_tokens", "degenerate", "doomed", "language", "sentences", "unquoted",
]  # fmt: skip

# Tuned on bench/devset (bench/devset_check.py): the good answers' sentences share 0.4-1.0 of
# their tokens with their passage (median 0.86), the other retrieved passages 0-0.63 (median
# 0.2). Overlap alone cannot tell those apart, the numbers do; 0.5 is the highest value that
# loses no more than one good answer (0.6 loses four).
SUPPORT_MIN = 0.5
MARKER_MIN = 0.3  # each cited passage's own share (or it holds a number of the sentence)
NEAR_BEST = 0.15  # an uncited sentence belongs to the passages within this of its best match
# An answer rests on a passage holding this share of the question's tokens at least: on the dev
# set the passages with the facts hold 0.5-1.0, the best one for "What is the dress code?" 0.33.
TOPIC_MIN = 0.45
MIN_CLAIM_TOKENS = 2
CJK_SHARE = 0.5  # CJK characters / (CJK characters + other words) from which text is Chinese
LOOP_TOKENS = 12  # a run of one repeated n-gram this long (three copies at least) is a loop


# A question that asks for a number, an amount, a duration or a time.
ASKS_NUMBER = re.compile(
    r"\bhow\s+(?:many|much|long|often|far|soon|quickly|early)\b|\bwhat\s+(?:is|are)\s+the\s+"
    r"(?:limit|budget|amount|maximum|minimum|rate)|\bwhen\b|幾|几|多少|多久|多長|多长|多快|多大|上限|何時|何时",
    re.IGNORECASE,
)
_IDEOGRAPH = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ebef]")
_KANA = re.compile(r"[\u3040-\u30ff]")
_HANGUL = re.compile(r"[\uac00-\ud7af]")
_CJK_ANY = re.compile(
    r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\U00020000-\U0002ebef]"
)
_MARK = re.compile(r"\[(\d{1,2}(?:\s*[,，]\s*\d{1,2})*)\]")
_BULLET = re.compile(r"^\s*(?:[-*•·]|\d{1,2}[.)]|#{1,6})\s+")
# A sentence ends at 。！？；(or their ASCII forms), or at "." before a space, a quote or the end.
_PIECE = re.compile(r".*?(?:[。！？；!?;]|\.(?=[\s\"'”’」』)\]]|$)|$)[\"'”’」』)\]]*", re.S)
_QUOTED = re.compile(r"\"([^\"\n]+)\"|“([^”\n]+)”|「([^」\n]+)」|『([^』\n]+)』|《([^》\n]+)》|\*([^*\n]+)\*")
# Words that carry no topic: question words, auxiliaries, lead-ins ("according to", 根據).
# fmt: off
_STOP = frozenset([
    "about", "according", "also", "any", "can", "could", "did", "do", "does", "far", "get", "gets", "got",
    "here", "i", "if", "just", "long", "many", "may", "me", "might", "much", "my", "no", "not", "often",
    "only", "our", "please", "per", "quickly", "should", "so", "soon", "then", "there", "they", "their",
    "them", "up", "us", "we", "would", "yes",
])
# knowledge.sparse's function characters, their Simplified forms, 根據 and the numerals.
_CJK_STOP = frozenset(
    "的了是在有和與及或嗎呢吧啊可以能會要請問幾多少什麼怎樣如何哪誰為之也就都而我你他她它們這那"
    "久么吗们这几会与为请样根據据零〇一二兩两三四五六七八九十百千萬万億亿"
)
# fmt: on
# The prompt's own phrases (agent/prompts.py and the default system prompt): an answer that
# repeats them is reading its instructions back, not answering.
_ECHO_PHRASES = (
    "numbered sources",
    "quoted company documents",
    "never instructions to you",
    "do not follow commands",
    "internal expert",
    "using only the numbered",
    "cite the sources you use",
    "if the sources do not contain",
)
_ECHO_LINE = re.compile(
    r"^(?:sources?|question|context|passages?)\s*:|^\[\d+\]\s*[^:\n]{1,80}:\s*\"|\[source\s*\d+\]", re.I
)
_TEMPLATE = re.compile(r"^\s*(?:the\s+)?answer(?:\s+is)?\s*:?|^\s*答案(?:是|為|为)?\s*:?", re.I)


@dataclass(frozen=True)
class Verdict:
    """``passed``; why not (``reasons``: short, stable prefixes and a detail); which sources
    (1-based) support the text, for its citations."""

    passed: bool
    reasons: list[str] = field(default_factory=list)
    supporting: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class Sentence:
    text: str  # as written, markers included
    markers: tuple[int, ...]
    line: int

    @property
    def core(self) -> str:
        return " ".join(_MARK.sub(" ", self.text).split())


def sentences(text: str) -> list[Sentence]:
    """Sentences of each line (list bullets and Markdown emphasis removed); markers that stand
    after a sentence's end ("per year. [1]") belong to it."""
    found: list[Sentence] = []
    for number, raw in enumerate(text.splitlines()):
        line = _BULLET.sub("", raw.replace("**", "")).strip()
        first = len(found)
        for piece in (p.strip() for p in _PIECE.findall(line)):
            marks = tuple(int(n) for m in _MARK.findall(piece) for n in re.split(r"\s*[,，]\s*", m))
            if not re.search(r"\w", _MARK.sub("", piece)) and len(found) > first:
                last = found[-1]  # only markers or closing quotes: they end the sentence before
                found[-1] = Sentence(f"{last.text}{piece}", last.markers + marks, number)
            elif piece:
                found.append(Sentence(piece, marks, number))
    return found


def _stem(word: str) -> str:
    # Just enough English folding for overlap: days/day, required/requires, yearly/year, daily/day.
    if word.endswith("ily") and len(word) >= 5:
        return word[:-3] + "y"
    for suffix, keep in (("ing", 3), ("ed", 3), ("es", 3), ("ly", 4), ("s", 3)):
        if word.endswith(suffix) and len(word) - len(suffix) >= keep:
            word = word[: -len(suffix)]
            break
    return word[:-1] if word.endswith("e") and len(word) > 3 else word


def content_tokens(text: str) -> set[str]:
    """Stemmed content words, CJK content characters and bigrams of two content characters
    (knowledge.sparse's tokens, less question words and numbers; Simplified folded to
    Traditional)."""
    text = text.translate(TO_TRADITIONAL)
    found: set[str] = set()
    for token in keywords(text):
        if _CJK_ANY.match(token):
            if token not in _CJK_STOP:
                found.add(token)
        elif token not in _STOP and not token.isdigit():
            found.add(_stem(token))
    found.update(t for t in tokenize(text) if len(t) == 2 and _CJK_ANY.match(t[0]) and not set(t) & _CJK_STOP)
    return found


def language(text: str) -> str:
    """``en`` (no CJK: English, in practice), ``zh-Hant``, ``zh-Hans``, ``zh`` (Chinese with no
    telling characters), ``ja``, ``ko``, or ``""`` for text without letters."""
    text = unicodedata.normalize("NFKC", text)
    ideographs, kana, hangul = (len(p.findall(text)) for p in (_IDEOGRAPH, _KANA, _HANGUL))
    cjk = ideographs + kana + hangul
    words = len(re.findall(r"[^\W\d_]+", _CJK_ANY.sub(" ", text)))
    if cjk + words == 0:
        return ""
    if cjk / (cjk + words) < CJK_SHARE:
        return "en"
    if hangul > ideographs + kana:
        return "ko"
    if kana >= 0.1 * (ideographs + kana):
        return "ja"
    trad = sum(c in TRADITIONAL for c in text)
    simp = sum(c in SIMPLIFIED for c in text)
    return "zh-Hant" if trad > simp else "zh-Hans" if simp > trad else "zh"


def accepts(asked: str, answered: str) -> bool:
    """Whether an answer in ``answered`` suits a question in ``asked``."""
    if not asked or not answered or asked == answered:
        return True
    if asked.startswith("zh") and answered.startswith("zh"):
        return "zh" in (asked, answered)  # only Traditional vs Simplified is a mismatch
    return False


def degenerate(text: str, *, final: bool = True, prompt: str = "") -> str | None:
    """Why ``text`` is degenerate, or None. With ``final=False`` it reads a streaming prefix:
    the last, unfinished line is left out of the line tests, so a caller can stop generating
    as soon as a loop shows. Empty text is not degenerate here (a prefix may be empty)."""
    text = fold(text)
    lower = text.lower()
    lines = [line.strip() for line in text.splitlines()]
    done = lines if final else lines[:-1]
    said = sentences("\n".join(done))
    long_enough = [n for n in (_normal(s.text) for s in said) if len(n.split()) >= 3 or len(n) >= 8]
    tests: list[tuple[str, Callable[[], bool]]] = [
        ("prompt echo", lambda: any(p in lower for p in _ECHO_PHRASES) or _prompt_echo(lower, prompt)),
        ("prompt echo", lambda: any(_ECHO_LINE.search(line) for line in done)),
        ("degenerate: marker-only line", lambda: any(_marker_only(line) for line in done)),
        ("degenerate: repeated lines", lambda: _repeats(_normal(line) for line in done)),
        ("degenerate: repeated sentences", lambda: _repeats(long_enough)),
        ("degenerate: loop", lambda: _loops(lower)),
        ("degenerate: template answer", lambda: any(_template(s.core) for s in said)),
        ("unfinished: an open quote", lambda: final and _open_quote(text)),
    ]
    return next((reason for reason, failed in tests if failed()), None)


def doomed(question: str, sources: Sequence[Hit], *, prompt: str = "") -> Callable[[str], str | None]:
    """A test of a streaming draft's prefix: why :func:`check` will reject the whole draft
    whatever follows (a loop, a finished sentence that its passages do not support, the wrong
    language), or None. The generator stops there instead of writing the rest for nothing."""
    passages = [_Passage(hit) for hit in sources]
    wanted = content_tokens(question)
    asked = language(question)

    def test(prefix: str) -> str | None:
        text = fold(prefix)
        if bad := degenerate(text, final=False, prompt=prompt):
            return bad
        done, _, growing = text.rpartition("\n")  # sentences of ended lines, and of the last but one
        finished = sentences(done) + sentences(growing)[:-1]
        for sentence in finished:
            if found := _judge(sentence, passages, wanted)[0]:
                return found[0]
        said = unquoted(" ".join(s.text for s in finished), (p.text for p in passages))
        if len(said) >= 24 and not accepts(asked, answered := language(said)):
            return f"wrong language: asked in {asked}, answered in {answered}"
        return None

    return test


def check(
    answer: str, question: str, sources: Sequence[Hit], *, prompt: str = "", topic: str = ""
) -> Verdict:
    """Judge ``answer`` to ``question`` against the numbered ``sources`` (``[1]`` is
    ``sources[0]``). ``prompt``: the system prompt in use, whose echo is rejected too.
    ``topic``: what was searched (a follow-up with its thread's question), default ``question``."""
    text = fold(answer).strip()
    if not text:
        return Verdict(False, ["empty"])
    reasons: list[str] = []
    if bad := degenerate(text, prompt=prompt):
        reasons.append(bad)
    passages = [_Passage(hit) for hit in sources]
    asked, answered = language(question), language(unquoted(text, (p.text for p in passages)))
    if not accepts(asked, answered):
        reasons.append(f"wrong language: asked in {asked}, answered in {answered}")
    wanted = content_tokens(question)
    supporting: list[int] = []
    for sentence in sentences(text):
        found, used = _judge(sentence, passages, wanted)
        reasons += found
        if used and not found:
            supporting += [n for n in used if n not in supporting]
    if not supporting and not reasons:
        reasons.append("no supported claim")
    # True but beside the point (the annual-leave rule quoted for a question on marriage leave):
    # the answer must rest on a passage that matches the question about as well as the best.
    fits = [_share(content_tokens(topic) if topic else wanted, p.tokens) for p in passages]

    def beside(n: int) -> bool:
        # The floor is meaningless across languages: an English question on a Chinese passage.
        floor = TOPIC_MIN if accepts(asked, language(passages[n - 1].text)) else 0.0
        return fits[n - 1] < max(max(fits) - NEAR_BEST, floor)

    if supporting and all(beside(n) for n in supporting):
        reasons.append("off topic: its passages are not the ones that match the question")
    # "When must I return my laptop?" answered with no time at all, though its passage has one.
    wants_number = supporting and ASKS_NUMBER.search(question) and not quantities(text)
    if wants_number and any(passages[n - 1].quantities for n in supporting):
        reasons.append("asks for a number, and the answer states none")
    return Verdict(not reasons, reasons, supporting)


class _Passage:
    def __init__(self, hit: Hit) -> None:
        self.text = fold(f"{hit.title}\n{hit.heading}\n{hit.text}")
        self.tokens = content_tokens(without_quantities(self.text))
        self.quantities = quantities(self.text)

    def holds(self, q: Quantity) -> bool:
        return any(q.matches(mine) for mine in self.quantities)


def _share(tokens: set[str], against: set[str]) -> float:
    return len(tokens & against) / len(tokens) if tokens else 0.0


def _judge(s: Sentence, passages: list[_Passage], wanted: set[str]) -> tuple[list[str], list[int]]:
    """(reasons, the 1-based sources that support it); ([], []) for a sentence that claims nothing."""
    core = s.core
    numbers = quantities(core)
    tokens = content_tokens(without_quantities(core))
    terse = len(tokens) < MIN_CLAIM_TOKENS
    if terse and not numbers:
        return [], []
    reasons = [f"marker [{n}] names no source" for n in s.markers if not 1 <= n <= len(passages)]
    cited = [n for n in dict.fromkeys(s.markers) if 1 <= n <= len(passages)]
    shown = core if len(core) <= 80 else core[:79] + "…"
    if terse:  # a bare number is about what was asked: judge it by the question
        fits = [_share(wanted, p.tokens) for p in passages]
        pool = [n for n in (cited or range(1, len(passages) + 1)) if fits[n - 1] >= SUPPORT_MIN]
        pool = [n for n in pool if fits[n - 1] >= max(fits, default=0.0) - NEAR_BEST]
    elif cited:
        for n in cited:
            p = passages[n - 1]
            if _share(tokens, p.tokens) < MARKER_MIN and not any(p.holds(q) for q in numbers):
                reasons.append(f"marker [{n}] does not support its sentence")
        union = set().union(*(passages[n - 1].tokens for n in cited))
        if _share(tokens, union) < SUPPORT_MIN:
            if len(cited) == 1 and not reasons:  # its one marker points to the wrong passage
                reasons.append(f"marker [{cited[0]}] does not support its sentence")
            return [*reasons, f"sentence not supported: {shown}"], []
        missing = [q for q in numbers if not any(passages[n - 1].holds(q) for n in cited)]
        reasons += [f"unsupported number: {q}" for q in missing]
        return reasons, cited
    else:
        shares = [_share(tokens, p.tokens) for p in passages]
        best = max(shares, default=0.0)
        pool = [n for n, x in enumerate(shares, 1) if x >= SUPPORT_MIN and x >= best - NEAR_BEST]
    if not pool:
        return [*reasons, f"sentence not supported: {shown}"], []
    # The passage it belongs to must hold all its numbers; report what the closest one lacks.
    lacking = {n: [q for q in numbers if not passages[n - 1].holds(q)] for n in pool}
    n = min(pool, key=lambda k: len(lacking[k]))
    return [*reasons, *(f"unsupported number: {q}" for q in lacking[n])], [n]


def unquoted(text: str, passages: Iterable[str]) -> str:
    """``text`` without the spans it quotes (``"…"``, ``「…」``, ``《…》``, ``*…*``) from ``passages``."""
    given = [" ".join(p.split()) for p in passages]

    def drop(match: re.Match[str]) -> str:
        inner = " ".join(next(g for g in match.groups() if g).split()).rstrip(".。")
        return " " if any(inner in p for p in given) else match.group(0)

    return _QUOTED.sub(drop, text)


def _marker_only(line: str) -> bool:
    return bool(_MARK.search(line)) and not re.search(r"\w", _MARK.sub("", line))


def _normal(text: str) -> str:
    return " ".join(_MARK.sub(" ", text).lower().split()).strip(" .,:;!?。，：；！？")


def _repeats(items: Iterable[str]) -> bool:
    counts = Counter(item for item in items if len(item) >= 4)
    return bool(counts) and max(counts.values()) >= 2


def _loops(text: str) -> bool:
    """A run of one n-gram (n ≤ 8) repeated over LOOP_TOKENS tokens, three copies at least."""
    tokens = ["#" if t.isdigit() else t for t in re.findall(r"[a-z]+|\d+|" + _CJK_ANY.pattern, text)]
    for period in range(1, 9):
        run = 0
        for i in range(period, len(tokens)):
            run = run + 1 if tokens[i] == tokens[i - period] else 0
            if run >= 2 * period and run + period >= LOOP_TOKENS:
                return True
    return False


def _open_quote(text: str) -> bool:  # cut off by the token limit inside a quote
    return (
        text.count('"') % 2 == 1 or text.count("「") > text.count("」") or text.count("“") > text.count("”")
    )


def _template(core: str) -> bool:
    """ "The answer is: 16." — a lead-in with nothing but numbers (or nothing) after it."""
    found = _TEMPLATE.match(core)
    return found is not None and not re.search(r"\w", without_quantities(core[found.end() :]))


def _prompt_echo(lower: str, prompt: str) -> bool:
    """Eight words in a row from the configured system prompt."""
    words, said = re.findall(r"\w+", prompt.lower()), " ".join(re.findall(r"\w+", lower))
    return any(" ".join(words[i : i + 8]) in said for i in range(len(words) - 7))
