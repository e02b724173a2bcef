"""The evaluation gate: a candidate adapter against the active one (or the base model) on a golden set.

Golden set: JSON lines of two kinds, mixed freely —
- ``{"question": "...", "collections": ["hr"], "facts": ["10 days", ...]}``: asked through the real
  answer path (retrieval, prompt, model) with each adapter; *fact hit rate* is the share of facts
  found in the answers (case-insensitive), *refusal rate* the share of answers that say the
  documents do not hold the answer, *length* the mean answer length in characters;
- ``{"prompt", "chosen", "rejected"}`` (TRL DPO rows): *preference accuracy* by DPO's implicit
  reward against the base model (:mod:`finetune.preference`).

Pairs held out of the night's own feedback are scored separately (*held-out accuracy*): they come
from the same, possibly poisoned, feedback as the training data, so only the golden set is a
trustworthy anchor; neither may regress.

The candidate passes when no metric regresses beyond its tolerance (:class:`GateConfig`).
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
from finetune.preference import score_adapter

_REFUSAL = re.compile(
    r"could not find|do not know|don't know|not in the (?:documents|sources)", re.IGNORECASE
)


@dataclass(frozen=True)
class GateConfig:
    """How much worse than the current adapter a candidate may be on each metric, and still pass."""

    preference_tolerance: float = field(
        default=0.02, metadata={"help": "Preference accuracy may drop this much."}
    )
    fact_tolerance: float = field(default=0.05, metadata={"help": "Fact hit rate may drop this much."})
    refusal_tolerance: float = field(default=0.05, metadata={"help": "Refusal rate may rise this much."})
    length_ratio: tuple[float, float] = field(
        default=(0.5, 2.0), metadata={"help": "Mean answer length must stay within these multiples."}
    )


@dataclass
class Metrics:
    preference_accuracy: float | None = None
    preference_margin: float | None = None
    heldout_accuracy: float | None = None
    fact_hit_rate: float | None = None
    refusal_rate: float | None = None
    mean_length: float | None = None
    answers: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Report:
    candidate: str
    against: str
    metrics: dict[str, Metrics]
    passed: bool
    reasons: list[str]

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
        for name in (
            "preference_accuracy",
            "preference_margin",
            "fact_hit_rate",
            "refusal_rate",
            "mean_length",
        ):
            lines.append(f"| {name} | {_fmt(getattr(c, name))} | {_fmt(getattr(a, name))} |")
        lines += ["", "## Answers side by side", ""]
        for mine, theirs in zip(c.answers, a.answers, strict=True):
            lines += [
                f"**{mine['question']}** (facts: {', '.join(mine['facts'])})",
                "",
                f"- {self.candidate}: {mine['answer']}",
                f"- {self.against}: {theirs['answer']}",
                "",
            ]
        return "\n".join(lines)


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
        hits = facts = refusals = length = 0
        for q in questions:
            result = await answerer.ask(
                Question(q["question"], list(q["collections"]), asker="eval", platform="eval"),
                adapter=adapter,
            )
            text = result.answer
            found = [f for f in q["facts"] if f.casefold() in text.casefold()]
            hits, facts = hits + len(found), facts + len(q["facts"])
            refusals += int(result.status == "not_found" or bool(_REFUSAL.search(text)))
            length += len(text)
            metrics.answers.append(
                {"question": q["question"], "facts": q["facts"], "answer": text, "found": found}
            )
        metrics.fact_hit_rate = hits / facts if facts else None
        metrics.refusal_rate = refusals / len(questions)
        metrics.mean_length = length / len(questions)
    return metrics


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

    worse("preference_accuracy", config.preference_tolerance)
    worse("heldout_accuracy", config.preference_tolerance)
    worse("fact_hit_rate", config.fact_tolerance)
    worse("refusal_rate", config.refusal_tolerance, higher_is_better=False)
    if candidate.mean_length is not None and against.mean_length:
        low, high = config.length_ratio
        ratio = candidate.mean_length / against.mean_length
        if not low <= ratio <= high:
            reasons.append(f"mean answer length changed {ratio:.2f}× (allowed {low}–{high}×)")
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
    if not questions and not pairs and not heldout:
        reasons.append("the golden set is empty")
    return Report(candidate[0], against[0], {"candidate": mine, "against": theirs}, not reasons, reasons)
