"""Answer quality on the grounding dev set, with the real model: grounding strict vs off.

The documents of ``bench/devset/`` (only the ``.md`` files, copied to a temporary folder) are
ingested into a temporary knowledge base with the embedded defaults (embedding model, SmolLM2
on CPU). Every question of ``questions.jsonl`` (see bench/devset_check.py for its fields) is
then answered twice in one run, by two Answerers sharing that knowledge base and model:
``grounding="strict"`` (the draft is held back and only the checked text is shown: the draft,
a cited extractive answer or "not found") and ``grounding="off"`` (the model's tokens stream as
generated; the check still runs and is recorded). The two modes alternate which goes first,
question by question, so neither gets the warmer caches.

Per mode and language (``en``; ``zh`` = zh-Hant and zh-Hans) it reports

- accuracy: an answerable question is right when its status is ``ok`` and the shown answer's
  own text (``result.answer``, citation markers removed; not the citation quotes) matches
  ``answer_pattern`` (case-insensitive); an unanswerable one (pattern null) when the status is
  ``not_found``. Answerable and unanswerable are also reported apart;
- unsupported numbers: answers with status ``ok`` stating a quantity (agent.numbers) that none
  of the passages the model was given states (title, heading and text, compared with
  ``Quantity.matches`` as agent.grounding does). The passages are those listed in the prompt
  the answer log recorded, found again among the chunks a search of the question returns with
  a limit above the dev collection's size. A COUNT of answers;
- degenerate: answers for which agent.grounding.degenerate (with the system prompt, as the
  check uses it) finds a reason, plus empty answers with status ``ok``. A COUNT of answers;
- fallback rate (``grounding["fallback"]`` set: always 0 with grounding off), grounded rate
  (the shown text is the model's and passed the check; with grounding off: the draft passed);
- wrong language: agent.grounding.accepts(language(question), language(answer)) fails, the
  spans the answer quotes from its passages (``「…」``, ``《…》``, ``"…"``, ``*…*``) left out, as
  the check leaves them out (a Simplified question may get a Traditional quote).

And the timings, measured in the same run: the check's cost (``timings["grounding"]`` / the
answer's wall time, over the answers the model wrote), the time to the first visible token
(strict: the checked text arrives in one piece at the end; off: the model's first token), and
the whole answer's time, strict vs off.

Goals (strict mode): accuracy ≥ 0.9 in both languages, 0 unsupported numbers, 0 degenerate
answers; the check's cost ≤ 5 % of the answer time. Ends with

    RESULT strict_en=… strict_zh=… unsupported_numbers=… degenerate=… fallback_en=… fallback_zh=…
           off_strict_en=… off_strict_zh=… off_unsupported_numbers=… off_degenerate=…
           check_cost=… first_visible_ratio=…

(one line): accuracies and fallback rates in 0-1, unsupported_numbers and degenerate as counts
of answers (``off_``: the same with grounding off), check_cost the mean share of strict mode's
answer time, first_visible_ratio the median time to the first visible token, strict / off.
Strict mode's wrong answers are always listed with their draft and the check's reasons.

    python bench/answer_quality.py [--limit N] [-v]

``--limit N``: only the first N questions (a quick run); ``-v``: a line per question and mode.
A full run takes a few minutes on CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devset_check import DEVSET, DevQuestion, load_questions, unsupported
from sqlalchemy import select

from agent.answering import Answerer, AnswerResult, Question
from agent.grounding import accepts, degenerate, language, unquoted
from kbot.db.models import Answer
from kbot.settings import Settings
from knowledge.vectorstore import Hit

COLLECTION = "dev"
MODES = ("strict", "off")
GROUPS = ("en", "zh")
# A citation marker, "[1]" or "[1, 2]": not a number the answer states.
_MARKERS = re.compile(r"\[\d{1,2}(?:\s*[,，]\s*\d{1,2})*\]")


@dataclass(frozen=True)
class Run:
    """One question answered in one mode."""

    question: DevQuestion
    mode: str
    result: AnswerResult
    passages: list[Hit]  # what the model was given (empty when nothing was relevant)
    prompt: str  # the model's last user message ("" when no model was called)
    first_visible: float  # seconds to the first non-empty text item
    total: float  # seconds to the AnswerResult

    @property
    def own_text(self) -> str:
        return _MARKERS.sub(" ", self.result.answer)

    @property
    def correct(self) -> bool:
        if self.question.answer_pattern is None:
            return self.result.status == "not_found"
        return self.result.status == "ok" and bool(
            re.search(self.question.answer_pattern, self.own_text, re.IGNORECASE)
        )

    @property
    def unsupported(self) -> list[str]:
        """Quantities of the shown answer that no passage given to the model states."""
        if self.result.status != "ok":
            return []
        return [str(q) for q in unsupported(self.own_text, self.passages)]

    def degenerate(self, prompt: str) -> str | None:
        if self.result.status == "ok" and not self.result.answer.strip():
            return "empty"
        return degenerate(self.result.answer, prompt=prompt)

    @property
    def wrong_language(self) -> bool:
        return not accepts(language(self.question.question), language(self.unquoted))

    @property
    def unquoted(self) -> str:
        """The answer's own text less the spans it quotes from a passage or a passage's title."""
        return unquoted(self.own_text, (f"{h.title}\n{h.heading}\n{h.text}" for h in self.passages))

    @property
    def fallback(self) -> str | None:
        value = self.result.grounding.get("fallback")
        return str(value) if value else None

    @property
    def check_share(self) -> float | None:
        """The check's share of the answer's wall time (None: no check ran)."""
        spent = self.result.timings.get("grounding")
        return spent / self.total if spent is not None and self.total > 0 else None


async def answer(answerer: Answerer, q: DevQuestion, mode: str, hits: list[Hit]) -> Run:
    started = time.perf_counter()
    first: float | None = None
    result: AnswerResult | None = None
    async for item in answerer.stream(Question(q.question, [COLLECTION])):
        if isinstance(item, AnswerResult):
            result = item
        elif isinstance(item, str) and first is None and item:
            first = time.perf_counter() - started
    total = time.perf_counter() - started
    assert result is not None
    prompt, used = await logged(answerer, result)
    return Run(q, mode, result, given_passages(used, hits), prompt, first or total, total)


async def logged(answerer: Answerer, result: AnswerResult) -> tuple[str, list[str]]:
    """The last user message of the model's prompt ("" when no model was asked) and the chunk ids
    of the passages the answer was given (to the model, or to the extractive answer without it),
    as the answer log recorded them."""
    async with answerer.kb.db.session() as s:
        row = await s.scalar(select(Answer).where(Answer.id == result.answer_id))
    if row is None:
        return "", []
    prompt = str(row.messages[-1]["content"]) if row.messages else ""
    return prompt, [str(r["chunk_id"]) for r in row.retrieved if r.get("used")]


def given_passages(used: list[str], hits: list[Hit]) -> list[Hit]:
    """The passages the answer was given, in their order, found among ``hits``: all the
    collection's chunks (the graph's own search cannot be repeated exactly: tied passages)."""
    by_id = {h.chunk_id: h for h in hits}
    missing = [c for c in used if c not in by_id]
    if missing:
        print(f"warning: {len(missing)} passages of the answer not found again", file=sys.stderr)
    return [by_id[c] for c in used if c in by_id]


def copy_documents(target: Path) -> Path:
    target.mkdir(parents=True)
    for path in sorted(DEVSET.glob("*.md")):
        shutil.copy2(path, target / path.name)
    return target


async def run_all(questions: list[DevQuestion], verbose: bool) -> tuple[list[Run], str]:
    runs: list[Run] = []
    with tempfile.TemporaryDirectory() as tmp:
        docs = copy_documents(Path(tmp) / "docs")
        data = Path(tmp) / "data"
        strict = await Answerer.open(Settings(data_dir=data, grounding="strict"))
        try:
            report = await strict.kb.ingest([str(docs)], COLLECTION)
            print(f"ingested {len(report.added)} documents, {report.chunks} chunks", flush=True)
            off = await Answerer.open(
                Settings(data_dir=data, grounding="off"), kb=strict.kb, backend=strict.backend
            )
            try:
                answerers = {"strict": strict, "off": off}
                await strict.warm_up()
                await strict.ask(Question(questions[0].question, [COLLECTION]))  # first kernels
                limit = 64  # more than the dev collection's chunks: every passage the graph could give
                for i, q in enumerate(questions):
                    found = await strict.kb.search(q.question, [COLLECTION], limit=limit)
                    for mode in MODES if i % 2 == 0 else MODES[::-1]:
                        run = await answer(answerers[mode], q, mode, found)
                        runs.append(run)
                        if verbose:
                            print_run(run, i + 1)
            finally:
                await off.close()
            prompt = strict.settings.system_prompt
        finally:
            await strict.close()
    return runs, prompt


def print_run(run: Run, number: int) -> None:
    shown = " ".join(run.result.answer.split())[:80]
    print(
        f"{number:>3} {run.question.question[:34]:<34} {run.mode:<6} {run.result.status:<9} "
        f"{run.fallback or '-':<10} {'yes' if run.correct else 'NO ':<3} {run.total:5.1f}s  {shown}",
        flush=True,
    )


def rate(runs: Sequence[Run], test: Callable[[Run], bool]) -> float:
    return sum(map(test, runs)) / len(runs) if runs else 0.0


def fraction(runs: Sequence[Run], test: Callable[[Run], bool]) -> str:
    return f"{sum(map(test, runs))}/{len(runs)}"


def summary(runs: list[Run], prompt: str) -> None:
    print(
        f"\n{'mode':<7}{'lang':<5}{'accuracy':>14}{'answerable':>12}{'unanswerable':>14}"
        f"{'unsupp.num':>12}{'degenerate':>12}{'fallback':>10}{'grounded':>10}{'wrong-lang':>12}{'errors':>8}"
    )
    for mode in MODES:
        for group in GROUPS:
            some = [r for r in runs if r.mode == mode and r.question.group == group]
            answerable = [r for r in some if r.question.answer_pattern is not None]
            unanswerable = [r for r in some if r.question.answer_pattern is None]
            accuracy = f"{fraction(some, lambda r: r.correct)} {rate(some, lambda r: r.correct):.2f}"
            print(
                f"{mode:<7}{group:<5}{accuracy:>14}{fraction(answerable, lambda r: r.correct):>12}"
                f"{fraction(unanswerable, lambda r: r.correct):>14}"
                f"{sum(bool(r.unsupported) for r in some):>12}"
                f"{sum(r.degenerate(prompt) is not None for r in some):>12}"
                f"{rate(some, lambda r: r.fallback is not None):>10.2f}"
                f"{rate(some, lambda r: r.result.grounded):>10.2f}"
                f"{sum(r.wrong_language for r in some):>12}"
                f"{sum(r.result.status == 'error' for r in some):>8}"
            )
    strict = [r for r in runs if r.mode == "strict"]
    fallbacks = [r.fallback for r in strict if r.fallback]
    print(
        "strict fallbacks: "
        + ", ".join(f"{k} {fallbacks.count(k)}" for k in sorted(set(fallbacks)))
        + (f" (of {len(strict)} answers)" if fallbacks else "none")
    )
    print("\ntimings (median over the answers; check cost over those the model wrote):")
    for mode in MODES:
        some = [r for r in runs if r.mode == mode]
        shares = [s for s in (r.check_share for r in some) if s is not None]
        grounding = [r.result.timings["grounding"] for r in some if "grounding" in r.result.timings]
        generation = [r.result.timings["generation"] for r in some if "generation" in r.result.timings]
        print(
            f"  {mode:<6} first visible {statistics.median(r.first_visible for r in some):6.2f} s   "
            f"answer {statistics.median(r.total for r in some):6.2f} s "
            f"(total {sum(r.total for r in some):6.1f} s)"
            f"   check {statistics.median(grounding) * 1000 if grounding else 0:5.1f} ms: "
            f"mean {statistics.fmean(shares) * 100 if shares else 0:.2f} % of the answer, "
            f"max {max(shares, default=0) * 100:.2f} %  (goal ≤ 5 %); "
            f"generation {statistics.median(generation) if generation else 0:.2f} s"
        )
    by = {(r.question.question, r.mode): r for r in runs}
    pairs = [(by[q, "strict"], by[q, "off"]) for q, mode in by if mode == "strict" and by[q, "strict"].prompt]
    same_prompt = [(a, b) for a, b in pairs if a.prompt == b.prompt]
    same_draft = sum(a.result.generated == b.result.generated for a, b in same_prompt)
    print(
        f"  same prompt in both modes: {len(same_prompt)}/{len(pairs)} questions (tied passages change "
        f"places between searches); same draft: {same_draft} of those"
    )


def misses(runs: list[Run], prompt: str) -> None:
    wrong = [
        r
        for r in runs
        if r.mode == "strict" and (not r.correct or r.unsupported or r.degenerate(prompt) or r.wrong_language)
    ]
    print(f"\nstrict mode, wrong or flagged: {len(wrong)}")
    for r in wrong:
        flags = [
            *(["wrong"] if not r.correct else []),
            *([f"unsupported numbers {r.unsupported}"] if r.unsupported else []),
            *([f"degenerate: {r.degenerate(prompt)}"] if r.degenerate(prompt) else []),
            *(["wrong language"] if r.wrong_language else []),
        ]
        print(f"- {r.question.question}  [{'; '.join(flags)}] expected {r.question.answer_pattern!r}")
        print(f"    status {r.result.status}, fallback {r.fallback}, grounded {r.result.grounded}")
        print(f"    shown:   {r.result.answer!r}")
        print(f"    draft:   {r.result.generated!r}")
        print(f"    reasons: {r.result.grounding.get('reasons')}")
        print(f"    passages: {[f'{h.source} > {h.heading}' for h in r.passages]}")


def result_line(runs: list[Run], prompt: str) -> str:
    def accuracy(mode: str, group: str) -> float:
        return rate([r for r in runs if r.mode == mode and r.question.group == group], lambda r: r.correct)

    def fallback(group: str) -> float:
        some = [r for r in runs if r.mode == "strict" and r.question.group == group]
        return rate(some, lambda r: r.fallback is not None)

    strict = [r for r in runs if r.mode == "strict"]
    off = [r for r in runs if r.mode == "off"]
    shares = [s for s in (r.check_share for r in strict) if s is not None]
    first_off = statistics.median(r.first_visible for r in off)
    ratio = statistics.median(r.first_visible for r in strict) / first_off if first_off else 0.0
    return (
        f"RESULT strict_en={accuracy('strict', 'en'):.2f} strict_zh={accuracy('strict', 'zh'):.2f} "
        f"unsupported_numbers={sum(bool(r.unsupported) for r in strict)} "
        f"degenerate={sum(r.degenerate(prompt) is not None for r in strict)} "
        f"fallback_en={fallback('en'):.2f} fallback_zh={fallback('zh'):.2f} "
        f"off_strict_en={accuracy('off', 'en'):.2f} off_strict_zh={accuracy('off', 'zh'):.2f} "
        f"off_unsupported_numbers={sum(bool(r.unsupported) for r in off)} "
        f"off_degenerate={sum(r.degenerate(prompt) is not None for r in off)} "
        f"check_cost={statistics.fmean(shares) if shares else 0.0:.3f} first_visible_ratio={ratio:.2f}"
    )


def main(args: argparse.Namespace) -> None:
    questions = load_questions()
    if args.limit is not None:
        questions = questions[: args.limit]
    if not questions:
        raise SystemExit("no questions")
    runs, prompt = asyncio.run(run_all(questions, args.verbose))
    summary(runs, prompt)
    misses(runs, prompt)
    print(result_line(runs, prompt))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--limit", type=int, default=None, help="only the first N questions")
    parser.add_argument("-v", "--verbose", action="store_true", help="a line per question and mode")
    main(parser.parse_args())
