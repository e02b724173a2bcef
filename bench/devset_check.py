"""The grounding dev set: extractive answers and the grounding check, without a model.

``bench/devset/`` holds short policy documents (Markdown, English and Traditional Chinese, with
numbers that distract: a hotel limit of 180 and one of 250 EUR, 喪假八日 and 產假八星期) and
``questions.jsonl``, one question a line:

- ``question``, ``lang`` (``en``, ``zh-Hant``, ``zh-Hans``);
- ``answer_pattern``: a regex the shown answer's own text must match (null: the documents do
  not answer it, and the right outcome is "not found");
- ``source``: the file that holds the fact; ``distractors``: numbers of the corpus that would be
  wrong answers;
- ``good``: answers a capable model might write, which the check must pass; ``bad``: wrong ones
  (a number from another passage or from none, the wrong language or script) it must reject.
  ``[S]`` in them stands for the marker of the retrieved passage that holds the fact.

Retrieval here is knowledge.sparse's BM25 (the IDF computed over the dev corpus, as Qdrant
does over a collection) over one passage per document section, then the graph's keyword-share
filter, top 4: the passages the model would see. Prints per-language figures and ends with

    RESULT extractive_en=… extractive_zh=… unsupported_numbers=… not_found=… good_passed=…
           bad_rejected=… off_topic_rejected=…

(also: good answers cited to another retrieved passage, which must be rejected; true sentences of
another document's retrieved passage, cited right but beside the question, which must be rejected
too; and how many extractive answers also quote a distractor number, as a sentence often holds two).

    python bench/devset_check.py [-v]
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.extractive import Extractive, extractive_answer
from agent.grounding import check, language, sentences
from agent.numbers import Quantity, quantities
from knowledge import sparse
from knowledge.loaders import is_supported, load_document
from knowledge.vectorstore import Hit

DEVSET = Path(__file__).resolve().parent / "devset"
SOURCES = 4  # Settings.answer_sources' default
MIN_RELEVANCE = 0.3  # Settings.min_relevance's default, as the graph's judge applies it


@dataclass(frozen=True)
class DevQuestion:
    question: str
    lang: str
    answer_pattern: str | None
    source: str | None
    distractors: list[str] = field(default_factory=list)
    good: list[str] = field(default_factory=list)
    bad: list[str] = field(default_factory=list)

    @property
    def group(self) -> str:
        return "zh" if self.lang.startswith("zh") else "en"


def load_corpus(folder: Path = DEVSET) -> list[Hit]:
    """One passage per section of every document (the dev documents' sections are chunk-sized)."""
    hits: list[Hit] = []
    for path in sorted(p for p in folder.iterdir() if is_supported(p)):
        document = load_document(path, source=path.name)
        for i, section in enumerate(document.sections):
            heading = " > ".join(section.heading_path)
            hits.append(
                Hit(f"{path.name}#{i}", 0.0, "dev", path.name, document.title, heading, section.text, ("*",))
            )
    return hits


def load_questions(folder: Path = DEVSET) -> list[DevQuestion]:
    lines = (folder / "questions.jsonl").read_text(encoding="utf-8").splitlines()
    return [DevQuestion(**json.loads(line)) for line in lines if line.strip()]


def retrieve(question: str, corpus: list[Hit], limit: int = SOURCES) -> list[Hit]:
    """BM25 ranking with knowledge.sparse's vectors, then the graph's keyword-share filter."""
    docs = [sparse.document_vector(f"{h.title} > {h.heading}\n{h.text}") for h in corpus]
    df = Counter(i for d in docs for i in d.indices)
    idf = {i: math.log(1 + (len(docs) - n + 0.5) / (n + 0.5)) for i, n in df.items()}
    wanted = set(sparse.query_vector(question).indices)
    scores = [sum(v * idf[i] for i, v in zip(d.indices, d.values, strict=True) if i in wanted) for d in docs]
    ranked = [h for s, h in sorted(zip(scores, corpus, strict=True), key=lambda p: -p[0]) if s > 0]
    words = sparse.keywords(question)

    def share(h: Hit) -> float:
        return len(words & sparse.keywords(f"{h.title} {h.heading} {h.text}")) / max(1, len(words))

    return [h for h in ranked[: limit * 2] if share(h) >= MIN_RELEVANCE][:limit]


def fact_marker(q: DevQuestion, hits: list[Hit]) -> int | None:
    """The 1-based number of the retrieved passage that holds the question's fact."""
    for n, h in enumerate(hits, 1):
        if h.source == q.source and q.answer_pattern and re.search(q.answer_pattern, h.text, re.I):
            return n
    return None


def states_fact(q: DevQuestion, text: str) -> bool:
    return bool(q.answer_pattern and re.search(q.answer_pattern, text, re.I))


def unsupported(text: str, hits: Sequence[Hit]) -> list[Quantity]:
    """Quantities of ``text`` (its ``[n]`` markers left out) that no passage states."""
    known = [x for h in hits for x in quantities(f"{h.title}\n{h.heading}\n{h.text}")]
    return [q for q in quantities(re.sub(r"\[\d+\]", " ", text)) if not any(q.matches(k) for k in known)]


def shows_distractor(q: DevQuestion, text: str) -> bool:
    """Whether ``text`` states one of the question's distractor numbers."""
    said = quantities(re.sub(r"\[\d+\]", " ", text))
    wrong = [w for d in q.distractors for w in quantities(d)]
    return any(w.matches(x) for w in wrong for x in said)


@dataclass
class Figures:
    asked: Counter[str] = field(default_factory=Counter)
    correct: Counter[str] = field(default_factory=Counter)
    unanswerable: int = 0
    not_found: int = 0
    checked: int = 0
    extractive_failing_check: list[str] = field(default_factory=list)
    unsupported: int = 0
    good: int = 0
    good_passed: int = 0
    bad: int = 0
    bad_rejected: int = 0
    misattributed: int = 0  # good answers whose [S] is moved to another retrieved passage
    misattributed_rejected: int = 0
    distractor_shown: int = 0  # extractive answers that also quote a distractor number
    off_topic: int = 0  # true sentences of another document's retrieved passage, correctly cited
    off_topic_rejected: int = 0
    misses: list[str] = field(default_factory=list)


def evaluate(corpus: list[Hit] | None = None, questions: list[DevQuestion] | None = None) -> Figures:
    corpus = load_corpus() if corpus is None else corpus
    questions = load_questions() if questions is None else questions
    f = Figures()
    for q in questions:
        hits = retrieve(q.question, corpus)
        found = extractive_answer(q.question, hits, lang=language(q.question)) if hits else None
        if q.answer_pattern is None:
            f.unanswerable += 1
            f.not_found += found is None
            if found is not None:
                f.misses.append(f"{q.question} → should be not found, got {found.text!r}")
            continue
        _extractive_figures(f, q, hits, found)
        _check_figures(f, q, hits)
    return f


def _extractive_figures(f: Figures, q: DevQuestion, hits: list[Hit], found: Extractive | None) -> None:
    f.asked[q.group] += 1
    if found is not None and states_fact(q, found.text):
        f.correct[q.group] += 1
    else:
        f.misses.append(f"{q.question} → {found.text if found else None!r}")
    if found is not None:
        f.checked += 1
        f.distractor_shown += shows_distractor(q, found.text)
        f.unsupported += len(unsupported(found.text, hits))
        verdict = check(found.text, q.question, hits)
        if not verdict.passed:
            f.extractive_failing_check.append(f"{q.question}: {verdict.reasons}")


def _check_figures(f: Figures, q: DevQuestion, hits: list[Hit]) -> None:
    """The check on the hand-written answers, and on the good ones cited to a wrong passage."""
    marker = fact_marker(q, hits)
    for answer in q.good:
        verdict = check(answer.replace("[S]", f"[{marker}]" if marker else ""), q.question, hits)
        f.good, f.good_passed = f.good + 1, f.good_passed + verdict.passed
        if not verdict.passed:
            f.misses.append(f"good rejected: {answer} {verdict.reasons}")
    for answer in q.bad:
        passed = check(answer.replace("[S]", f"[{marker}]" if marker else ""), q.question, hits).passed
        f.bad, f.bad_rejected = f.bad + 1, f.bad_rejected + (not passed)
        if passed:
            f.misses.append(f"bad passed: {answer}")
    for answer in q.good if marker else []:
        for other in (n for n in range(1, len(hits) + 1) if n != marker):
            moved = answer.replace("[S]", f"[{other}]")
            passed = check(moved, q.question, hits).passed
            f.misattributed, f.misattributed_rejected = (
                f.misattributed + 1,
                f.misattributed_rejected + (not passed),
            )
            if passed:
                f.misses.append(f"misattributed passed: {moved}")
    # True but beside the point: another document's sentence, cited to its own passage.
    for n, hit in enumerate(hits, 1):
        if hit.source == q.source:
            continue
        said = next((s.text for s in sentences(hit.text) if quantities(s.text)), None)
        if said is None:
            continue
        passed = check(f"{said} [{n}]", q.question, hits).passed
        f.off_topic, f.off_topic_rejected = f.off_topic + 1, f.off_topic_rejected + (not passed)
        if passed:
            f.misses.append(f"off-topic passed: {q.question} → {said} [{n}]")


def main(args: argparse.Namespace) -> None:
    f = evaluate()
    share = {g: f.correct[g] / f.asked[g] if f.asked[g] else 0.0 for g in ("en", "zh")}
    for g in ("en", "zh"):
        print(f"extractive {g}: {f.correct[g]}/{f.asked[g]} state the fact ({share[g]:.2f})")
    print(f"unanswerable: {f.not_found}/{f.unanswerable} not found")
    print(f"extractive answers passing the check: {f.checked - len(f.extractive_failing_check)}/{f.checked}")
    print(f"good answers passed: {f.good_passed}/{f.good}; bad answers rejected: {f.bad_rejected}/{f.bad}")
    print(f"good answers cited to another passage, rejected: {f.misattributed_rejected}/{f.misattributed}")
    print(f"extractive answers also quoting a distractor number: {f.distractor_shown}/{f.checked}")
    print(f"true sentences of another document, cited right, rejected: {f.off_topic_rejected}/{f.off_topic}")
    if args.verbose:
        for line in f.misses + f.extractive_failing_check:
            print("  ", line)
    print(
        f"RESULT extractive_en={share['en']:.2f} extractive_zh={share['zh']:.2f} "
        f"unsupported_numbers={f.unsupported} not_found={f.not_found}/{f.unanswerable} "
        f"good_passed={f.good_passed}/{f.good} bad_rejected={f.bad_rejected}/{f.bad} "
        f"off_topic_rejected={f.off_topic_rejected}/{f.off_topic}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="list every miss")
    main(parser.parse_args())
