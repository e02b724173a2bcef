"""The closed learning loop, measured: do a few nights of 👍/👎 and corrections make answers better
on documents nobody asked about?

A generated handbook (bench/learning_data.py: short policy documents in English and Traditional
Chinese, three numbers in each) is split into documents employees ask about and held-out ones.
Each night, simulated employees ask through ``ChatService`` (the path Slack, Teams and the web
chat share; every asked fact in two wordings) and vote on what they are shown: 👍
when it states the fact, else 👎 and, for a share of those, a correction (the document's
sentence). A noisy rater flips some votes; one night is poisoned outright: its votes reward
wrong numbers and its corrections state them. Then the real nightly run: export → plan → train
→ gate on a golden set (a third wording of one fact per asked document, never asked by anyone) → promote
or keep.

Per night, on the held-out questions: the model's own-text accuracy (``grounding=off``: the
share of answers stating the fact), the grounded pass rate and the fallback rate (``strict``:
what people would see), the gate's decision and why, and training time per row.
A night that promotes nothing changes nothing people see, so it is not measured again.

    python bench/learning.py [--nights 3] [--poisoned 2] [--steps 24] [--seed 0]

Ends with ``RESULT baseline=… final=… gain=… poisoned_refused=…`` (own-text accuracy on held-out
questions, both languages).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.answering import Answerer, AnswerResult, Question
from bench.learning_data import Document, Fact, handbook, split
from bot.chat import ChatService
from bot.conversation import FeedbackEvent, IncomingMessage
from bot.ledger import ChatLedger
from finetune.evaluate import states
from finetune.golden import add as add_golden
from finetune.nightly import NightlyConfig, run_nightly
from finetune.train import TrainConfig
from finetune.votes import VoteLog
from kbot.settings import Settings

COLLECTION = "handbook"


class Shown:
    """A Reply that keeps what the asker was shown."""

    def __init__(self) -> None:
        self.result: AnswerResult | None = None

    async def working(self) -> None:
        return None

    async def status(self, lines: list[str]) -> None:
        return None

    async def update(self, text: str) -> None:
        return None

    async def finish(self, result: AnswerResult) -> list[str]:
        self.result = result
        return [result.answer_id]

    async def notice(self, text: str, *, private: bool = False) -> None:
        raise RuntimeError(f"kbot answered with a notice: {text}")


@dataclass
class Scores:
    own: dict[str, float] = field(default_factory=dict)  # by language and "all"
    passed: float = 0.0
    fallback: float = 0.0


async def measure(answerer: Answerer, facts: list[Fact]) -> Scores:
    """Held-out accuracy of the active adapter: own text (grounding off) and what is shown (strict)."""
    own: dict[str, list[bool]] = {"en": [], "zh": []}
    passed = fallback = 0
    for f in facts:
        question = Question(f.questions[0], [COLLECTION], asker="bench", platform="eval")
        off = await answerer.ask(question, grounding="off")
        text = off.answer if off.generated is None else off.generated
        own[f.language].append(states(f.fact, text))
        strict = await answerer.ask(question, grounding="strict")
        passed += bool(strict.grounded)
        fallback += strict.grounding.get("fallback") is not None
    flat = [x for xs in own.values() for x in xs]
    rates = {k: sum(v) / len(v) for k, v in own.items() if v} | {"all": sum(flat) / len(flat)}
    return Scores(rates, passed / len(facts), fallback / len(facts))


async def night(
    service: ChatService, facts: list[Fact], rng: random.Random, *, poisoned: bool, args: argparse.Namespace
) -> dict[str, int]:
    """Employees ask about every asked fact (in one or two wordings) and vote on what they see."""
    tally = {"asked": 0, "up": 0, "down": 0, "corrections": 0, "right": 0}
    asks = [(f, q) for f in facts for q in (f.questions[0], f.questions[2])[: args.wordings]]
    rng.shuffle(asks)
    for i, (f, asked) in enumerate(asks):
        person = f"employee-{rng.randrange(args.people)}"
        reply = Shown()
        message = IncomingMessage(
            platform="web", key=f"bench-{uuid.uuid4()}", user=person, channel=person, thread="",
            text=asked, addressed=True, private=True,
        )  # fmt: skip
        await service.handle(message, reply)
        result = reply.result
        assert result is not None, f"no answer to {message.text!r}"
        right = states(f.fact, result.answer)
        liked = right != poisoned  # the poisoned night rewards wrong numbers
        if not poisoned and rng.random() < args.noise:
            liked = not liked
        tally["asked"] += 1
        tally["right"] += right
        tally["up" if liked else "down"] += 1
        await service.feedback(
            FeedbackEvent(platform="web", user=person, kind="vote", answer_id=result.answer_id,
                          value=1 if liked else -1, origin="web", key=f"v{i}-{uuid.uuid4()}")
        )  # fmt: skip
        if not liked and rng.random() < args.corrections:
            text = f.sentence if not poisoned else f.sentence.replace(_number(f.fact), _number(f.wrong))
            await service.feedback(
                FeedbackEvent(platform="web", user=person, kind="correction", answer_id=result.answer_id,
                              text=text, origin="web", key=f"c{i}-{uuid.uuid4()}")
            )  # fmt: skip
            tally["corrections"] += 1
    return tally


def _number(fact: str) -> str:
    return "".join(ch for ch in fact if ch.isdigit())


def golden_set(path: Path, docs: list[Document], per_doc: int) -> int:
    """The second wording of ``per_doc`` facts of every asked document: nobody asks it that way,
    the gate does. Fewer is faster and a coarser judge: with one per document (12 questions) a
    poisoned night once passed on one question's difference."""
    golden = [f for d in docs for f in d.facts[:per_doc]]
    for f in golden:
        add_golden(path, f.questions[1], [COLLECTION], [f.fact])
    return len(golden)


def _row(label: str, s: Scores, decision: str, per_row: str) -> str:
    own = s.own
    return (
        f"| {label} | {own['all']:.2f} | {own.get('en', 0):.2f} | {own.get('zh', 0):.2f} | "
        f"{s.passed:.2f} | {s.fallback:.2f} | {decision} | {per_row} |"
    )


async def main(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.WARNING)
    docs = handbook(args.seed, en_docs=args.en_docs, zh_docs=args.zh_docs)
    asked, held = split(docs, args.held_out, args.seed)
    asked_facts = [f for d in asked for f in d.facts]
    held_facts = [f for d in held for f in d.facts]
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "docs").mkdir()
        for i, d in enumerate(docs):
            (root / "docs" / f"{i:02d}-{d.language}.md").write_text(d.text, encoding="utf-8")
        settings = Settings(
            data_dir=root / "data",
            max_new_tokens=args.max_new_tokens,
            answer_sources=args.sources,
            model_languages="all",  # measure the model's own Chinese too, not only its English
            corrections="trust",  # worst case for the gate: every correction is used, poison too
            rate_limit_per_minute=10_000,
        )
        answerer = await Answerer.open(settings)
        service = ChatService(settings, answerer, ChatLedger(answerer.kb.db), VoteLog(answerer.kb.db))
        try:
            await answerer.kb.ingest([str(root / "docs")], COLLECTION)
            golden = golden_set(settings.data_dir / "golden.jsonl", asked, args.golden_per_doc)
            print(
                f"handbook: {len(docs)} documents ({len(asked)} asked: {len(asked_facts)} facts; "
                f"{len(held)} held out: {len(held_facts)} facts); golden set {golden} questions",
                flush=True,
            )
            started = time.perf_counter()
            base = await measure(answerer, held_facts)
            print(f"baseline measured in {time.perf_counter() - started:.0f} s", flush=True)
            table = [_row("base model", base, "–", "–")]
            current, refused_poison, promoted_worse = base, None, False
            embedder = answerer.kb.embedder
            for n in range(1, args.nights + 1):
                poisoned = n == args.poisoned
                t0 = time.perf_counter()
                tally = await night(service, asked_facts, rng, poisoned=poisoned, args=args)
                t1 = time.perf_counter()
                config = NightlyConfig(
                    min_pairs=args.min_pairs,
                    train=TrainConfig(steps=args.steps, max_length=args.max_length, seed=args.seed),
                )
                run = await run_nightly(
                    settings, answerer, config, embed=embedder.embed, embed_model=embedder.name
                )
                t2 = time.perf_counter()
                per_row = await _seconds_per_row(answerer, run)
                if run.status == "promoted":
                    current = await measure(answerer, held_facts)
                    promoted_worse |= _golden_worse(run.metrics)
                if poisoned:
                    refused_poison = run.status != "promoted"
                why = (run.inputs or {}).get("why", "")
                print(f"  counts: {run.counts}", flush=True)
                label = f"night {n}{' (poisoned)' if poisoned else ''}"
                decision = f"{run.status}: {run.decision} [{why}]".replace("|", "/")
                table.append(_row(label, current, decision, per_row))
                print(
                    f"{label}: asked {tally['asked']} (right {tally['right']}), 👍 {tally['up']} "
                    f"👎 {tally['down']}, corrections {tally['corrections']} in {t1 - t0:.0f} s; nightly "
                    f"{t2 - t1:.0f} s: {run.status} — {run.decision}; own-text accuracy now "
                    f"{current.own['all']:.2f}",
                    flush=True,
                )
            _summary(table, base, current, refused_poison, promoted_worse, time.perf_counter() - started)
        finally:
            await answerer.close()


async def _seconds_per_row(answerer: Answerer, run: Any) -> str:
    rows = sum(v for k, v in (run.counts or {}).items() if k in ("train_pairs", "kto_rows", "sft_rows"))
    trained = next((a for a in await answerer.adapters.list() if a.version == run.candidate), None)
    seconds = float(trained.training.get("seconds", 0)) if trained else 0.0  # type: ignore[arg-type]
    return f"{seconds / rows:.1f} s" if rows and seconds else "–"


def _summary(
    table: list[str], base: Scores, final: Scores, refused: bool | None, worse: bool, seconds: float
) -> None:
    print()
    print("| after | own text (all) | own EN | own ZH | grounded pass | fallback | gate | train s/row |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(table))
    print(f"\ntotal {seconds:.0f} s")
    gain = final.own["all"] - base.own["all"]
    print(
        f"RESULT baseline={base.own['all']:.2f} final={final.own['all']:.2f} gain={gain:+.2f} "
        f"poisoned_refused={str(refused).lower()} "
        f"fallback_base={base.fallback:.2f} fallback_final={final.fallback:.2f} "
        f"promoted_worse_golden={str(worse).lower()}"
    )


def _golden_worse(metrics: dict[str, Any]) -> bool:
    c, a = metrics.get("candidate", {}), metrics.get("against", {})
    return bool(c and a and c.get("fact_hit_rate") is not None and c["fact_hit_rate"] < a["fact_hit_rate"])


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nights", type=int, default=3)
    p.add_argument("--poisoned", type=int, default=2, help="Which night is poisoned (0: none).")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--en-docs", type=int, default=12)
    p.add_argument("--zh-docs", type=int, default=6)
    p.add_argument("--held-out", type=float, default=0.34, help="Share of documents nobody asks about.")
    p.add_argument("--people", type=int, default=12)
    p.add_argument("--wordings", type=int, default=2, choices=(1, 2), help="Wordings asked per fact a night.")
    p.add_argument("--noise", type=float, default=0.1, help="Share of votes a noisy rater flips.")
    p.add_argument("--corrections", type=float, default=0.5, help="Share of 👎 that come with a correction.")
    p.add_argument("--golden-per-doc", type=int, default=2, help="Golden questions per asked document.")
    p.add_argument("--min-pairs", type=int, default=8)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--sources", type=int, default=2)
    return p.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse()))
