"""The evaluation gate: a candidate adapter must beat the active one (or the base model) on a golden set.

Golden set: JSON lines of two kinds, mixed freely (``kbot golden add`` writes the first kind) —
- ``{"question": "...", "collections": ["hr"], "facts": ["10 days", ...]}``: asked through the real
  answer path (retrieval, prompt, model) with each adapter and ``grounding="off"``, so what is
  judged is the model's own text, not the extractive fallback that would hide a bad model:
  *fact hit rate* is the share of facts found in it (case-insensitive; numbers in any notation the
  check reads: ``10`` = ``ten`` = ``十``), *grounded pass rate* the share of answers the grounding
  check would have shown, *refusal rate* the share that say the documents do not hold the answer
  (English and Chinese), *degenerate rate* the share that are empty or that the check calls
  degenerate (loops, repeated lines, prompt echo, marker-only lines);
- ``{"prompt", "chosen", "rejected"}`` (TRL DPO rows): *preference accuracy* by DPO's implicit
  reward against the base model (:mod:`finetune.preference`).

Pairs held out of the night's own feedback are scored separately (*held-out accuracy*): they come
from the same, possibly poisoned, feedback as the training data, so only the golden facts are a
trustworthy anchor.

The candidate passes only when it **beats** the other on the golden facts (a strictly higher fact
hit rate, by at least ``min_gain``) and regresses nowhere beyond its tolerance. An equal
candidate is refused; so is every candidate when there are no golden questions with facts.
Answer length is not a metric: shorter answers that state more facts are better answers;
degenerate output is what the length guard used to stand in for, and is measured directly.
Evaluation answers are logged with platform ``eval`` and never exported for training.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agent.answering import Answerer, Question
from agent.backends import AdapterRef
from agent.numbers import quantities
from finetune.preference import score_adapter

REFUSAL = re.compile(
    r"could ?n[o']t find|can ?n[o']t find|cannot find|unable to (?:find|answer)|do not know|don't know"
    r"|no information|not (?:in|mentioned in|covered by|stated in|found in) the "
    r"(?:documents|sources|passages|context)"
    r"|找不到|查不到|無法回答|无法回答|沒有(?:相關|相关)?(?:資訊|資料|信息|说明|說明)|没有(?:相关)?(?:信息|资料|说明)"
    r"|不知道|未(?:提及|提到|說明|说明)|(?:沒有|没有)(?:提及|提到)",
    re.IGNORECASE,
)
NO_GOLDEN = (
    "no golden questions with facts, so nothing shows the candidate is better: add some with "
    "`kbot golden add` or `kbot golden from-corrections`"
)


def refuses(text: str) -> bool:
    """Whether ``text`` says the documents do not hold the answer (English or Chinese)."""
    return bool(REFUSAL.search(text))


def states(fact: str, text: str) -> bool:
    """Whether ``text`` states ``fact``: as written (case-insensitive), or, for a fact that is a
    quantity, the same quantity in another notation (``10 days`` = ``ten days`` = ``十天``)."""
    if fact.casefold() in text.casefold():
        return True
    wanted = {(q.value, q.unit) for q in quantities(fact)}
    return bool(wanted) and wanted <= {(q.value, q.unit) for q in quantities(text)}


@dataclass(frozen=True)
class GateConfig:
    """What the candidate must gain on the golden facts, and how much worse it may be elsewhere."""

    min_gain: float = field(
        default=0.0,
        metadata={"help": "The fact hit rate must exceed the other's by more than this (0: strictly)."},
    )
    preference_tolerance: float = field(
        default=0.02, metadata={"help": "Preference accuracy may drop this much."}
    )
    grounded_tolerance: float = field(
        default=0.05, metadata={"help": "The grounded pass rate may drop this much."}
    )
    refusal_tolerance: float = field(default=0.05, metadata={"help": "Refusal rate may rise this much."})
    degenerate_tolerance: float = field(
        default=0.0, metadata={"help": "The share of degenerate answers may rise this much."}
    )


@dataclass
class Metrics:
    preference_accuracy: float | None = None
    preference_margin: float | None = None
    heldout_accuracy: float | None = None
    fact_hit_rate: float | None = None
    grounded_pass_rate: float | None = None
    refusal_rate: float | None = None
    degenerate_rate: float | None = None
    mean_length: float | None = None  # reported, never gated on
    answers: list[dict[str, Any]] = field(default_factory=list)


METRICS = (
    "fact_hit_rate",
    "grounded_pass_rate",
    "refusal_rate",
    "degenerate_rate",
    "preference_accuracy",
    "preference_margin",
    "heldout_accuracy",
    "mean_length",
)


@dataclass
class Report:
    candidate: str
    against: str
    metrics: dict[str, Metrics]
    passed: bool
    reasons: list[str]

    @property
    def harmful(self) -> bool:
        """Refused for being worse somewhere, not only for not being better."""
        return any(r != NO_GOLDEN and "does not beat" not in r for r in self.reasons)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, ensure_ascii=False)

    def to_markdown(self) -> str:
        c, a = self.metrics["candidate"], self.metrics["against"]
        lines = [
            f"# Evaluation: {self.candidate} vs {self.against}",
            "",
            f"**{'PASSED' if self.passed else 'REFUSED'}**"
            + (": " + "; ".join(self.reasons) if self.reasons else ""),
            "",
            f"| metric | {self.candidate} | {self.against} |",
            "|---|---|---|",
        ]
        for name in METRICS:
            lines.append(f"| {name} | {_fmt(getattr(c, name))} | {_fmt(getattr(a, name))} |")
        if c.answers:
            lines += ["", "## Answers side by side (the model's own text)", ""]
            lines += [f"| question | facts | {self.candidate} | {self.against} |", "|---|---|---|---|"]
        for mine, theirs in zip(c.answers, a.answers, strict=True):
            lines.append(
                f"| {_cell(mine['question'])} | {_cell(', '.join(mine['facts']))} | "
                f"{_cell(_marked(mine))} | {_cell(_marked(theirs))} |"
            )
        return "\n".join(lines)


def _marked(answer: dict[str, Any]) -> str:
    facts = f"{len(answer['found'])}/{len(answer['facts'])} facts"
    flags = [facts] + (["passes the check"] if answer.get("passed") else [])
    flags += ["refusal"] * bool(answer.get("refused")) + ["degenerate"] * bool(answer.get("degenerate"))
    return f"{answer['answer']} ({', '.join(flags)})"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def read_golden(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(questions, preference pairs) from a golden JSONL file."""
    questions, pairs = [], []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if {"prompt", "chosen", "rejected"} <= set(row):
            pairs.append(row)
        elif "question" in row:
            questions.append(
                {
                    "question": row["question"],
                    "collections": row.get("collections", []),
                    "facts": list(row.get("facts", [])),
                }
            )
        else:
            raise ValueError(f"{path}:{i}: neither a question row nor a preference pair")
    return questions, pairs


async def measure(
    answerer: Answerer | None,
    adapter: AdapterRef | None,
    questions: Sequence[dict[str, Any]],
    pairs: Sequence[dict[str, Any]],
    *,
    base_model: str,
    heldout: Sequence[dict[str, Any]] = (),
) -> Metrics:
    metrics = Metrics()
    path = adapter.path if adapter else None
    if pairs:
        score = await asyncio.to_thread(score_adapter, base_model, path, pairs)
        metrics.preference_accuracy, metrics.preference_margin = score.accuracy, score.mean_margin
    if heldout:
        metrics.heldout_accuracy = (
            await asyncio.to_thread(score_adapter, base_model, path, heldout)
        ).accuracy
    if questions and answerer is not None:
        for q in questions:
            result = await answerer.ask(
                Question(q["question"], list(q["collections"]), asker="eval", platform="eval"),
                adapter=adapter,
                grounding="off",
            )
            text = result.answer if result.generated is None else result.generated
            reasons = list(result.grounding.get("reasons", []))
            metrics.answers.append(
                {
                    "question": q["question"],
                    "facts": q["facts"],
                    "answer": text,
                    "found": [f for f in q["facts"] if states(f, text)],
                    # Would strict grounding have shown this text? (not_found: nothing to show)
                    "passed": bool(result.grounding.get("passed")) and result.status == "ok",
                    "refused": result.status == "not_found" or refuses(text),
                    "degenerate": not text.strip() or any(r.startswith("degenerate") for r in reasons),
                }
            )
        _summarise(metrics)
    return metrics


def _summarise(metrics: Metrics) -> None:
    answers = metrics.answers
    facts = sum(len(a["facts"]) for a in answers)
    metrics.fact_hit_rate = sum(len(a["found"]) for a in answers) / facts if facts else None
    metrics.grounded_pass_rate = sum(a["passed"] for a in answers) / len(answers)
    metrics.refusal_rate = sum(a["refused"] for a in answers) / len(answers)
    metrics.degenerate_rate = sum(a["degenerate"] for a in answers) / len(answers)
    metrics.mean_length = sum(len(a["answer"]) for a in answers) / len(answers)


def gate(candidate: Metrics, against: Metrics, config: GateConfig) -> list[str]:
    """Why the candidate must not be promoted; empty when it may."""
    reasons = []

    def worse(name: str, tolerance: float, higher_is_better: bool = True) -> None:
        mine, theirs = getattr(candidate, name), getattr(against, name)
        if mine is None or theirs is None:
            return
        drop = (theirs - mine) if higher_is_better else (mine - theirs)
        if drop > tolerance:
            reasons.append(f"{name} {mine:.3f} vs {theirs:.3f} (tolerance {tolerance})")

    mine, theirs = candidate.fact_hit_rate, against.fact_hit_rate
    if mine is None or theirs is None:
        reasons.append(NO_GOLDEN)
    elif mine < theirs:
        reasons.append(f"fact_hit_rate {mine:.3f} is worse than {theirs:.3f}")
    elif not mine > theirs + config.min_gain:
        reasons.append(
            f"fact_hit_rate {mine:.3f} does not beat {theirs:.3f}"
            + (f" by more than {config.min_gain}" if config.min_gain else "")
        )
    worse("grounded_pass_rate", config.grounded_tolerance)
    worse("refusal_rate", config.refusal_tolerance, higher_is_better=False)
    worse("degenerate_rate", config.degenerate_tolerance, higher_is_better=False)
    worse("preference_accuracy", config.preference_tolerance)
    worse("heldout_accuracy", config.preference_tolerance)
    return reasons


async def evaluate(
    answerer: Answerer | None,
    candidate: tuple[str, AdapterRef],
    against: tuple[str, AdapterRef | None],
    questions: Sequence[dict[str, Any]],
    pairs: Sequence[dict[str, Any]],
    *,
    base_model: str,
    heldout: Sequence[dict[str, Any]] = (),
    config: GateConfig | None = None,
) -> Report:
    config = config or GateConfig()
    mine = await measure(answerer, candidate[1], questions, pairs, base_model=base_model, heldout=heldout)
    theirs = await measure(answerer, against[1], questions, pairs, base_model=base_model, heldout=heldout)
    reasons = gate(mine, theirs, config)
    return Report(candidate[0], against[0], {"candidate": mine, "against": theirs}, not reasons, reasons)
