"""Answer-path overhead: kbot's whole answer (graph, retrieval, relevance judge, prompt building,
answer log) vs bare ``model.generate`` of the same prompt for the same number of tokens, and
the time to the first streamed token. Same process, same loaded model, interleaved runs. The
answer path includes the grounding check; with it (the default) the first token shown is the
checked answer, whole.
Goal: overhead ≤ 10 %.

    python bench/answer.py [--rounds R] [--max-new-tokens N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.answering import Answerer, AnswerResult, Question
from agent.backends.local import LocalBackend
from kbot.db.models import Answer
from kbot.settings import Settings

QUESTIONS = [
    "How many days of sick leave do I get?",
    "How many days of annual leave do I get?",
    "What is the daily meal limit when travelling?",
    "How do I report a lost laptop?",
]
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "handbook"


async def main(args: argparse.Namespace) -> None:
    import torch
    from sqlalchemy import select

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp), max_new_tokens=args.max_new_tokens)
        answerer = await Answerer.open(settings)
        await answerer.kb.ingest([str(EXAMPLES)], "hr")
        backend = answerer.backend
        assert isinstance(backend, LocalBackend)
        await answerer.ask(Question(QUESTIONS[0], ["hr"]))  # warm up: model load, first kernels
        model, tokenizer = backend._model, backend._tokenizer

        kbot_s, bare_s, ttft_s, tokens = [], [], [], []
        for _ in range(args.rounds):
            for text in QUESTIONS:
                started = time.perf_counter()
                first = None
                result = None
                async for item in answerer.stream(Question(text, ["hr"])):
                    if isinstance(item, AnswerResult):
                        result = item
                    elif isinstance(item, str) and first is None:
                        first = time.perf_counter() - started
                elapsed = time.perf_counter() - started
                # A model answer, shown or replaced by the check's fallback: either way it was generated.
                assert result is not None and result.generated, result
                async with answerer.kb.db.session() as s:
                    row = await s.scalar(select(Answer).where(Answer.id == result.answer_id))
                assert row is not None
                # The model's own draft (the check may show a cited quote instead): what it generated.
                n = len(tokenizer(result.generated or result.answer, add_special_tokens=False)["input_ids"])
                inputs = tokenizer.apply_chat_template(
                    row.messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
                )
                t0 = time.perf_counter()
                with torch.inference_mode():
                    model.generate(
                        **inputs,
                        max_new_tokens=n,
                        min_new_tokens=n,
                        do_sample=False,
                        pad_token_id=tokenizer.eos_token_id,
                    )
                bare_s.append(time.perf_counter() - t0)
                kbot_s.append(elapsed)
                ttft_s.append(first or elapsed)
                tokens.append(n)
        await answerer.close()

    kbot_total, bare_total = sum(kbot_s), sum(bare_s)
    overhead = kbot_total / bare_total - 1
    print(f"answers: {len(kbot_s)}, tokens per answer: median {statistics.median(tokens):.0f}")
    print(f"kbot answer path: {kbot_total:.2f} s total, median {statistics.median(kbot_s) * 1000:.0f} ms")
    print(f"bare generate:    {bare_total:.2f} s total, median {statistics.median(bare_s) * 1000:.0f} ms")
    print(f"time to first streamed token: median {statistics.median(ttft_s) * 1000:.0f} ms")
    print(
        f"RESULT overhead_pct={overhead * 100:.1f} ttft_ms={statistics.median(ttft_s) * 1000:.0f} "
        f"kbot_ms={statistics.median(kbot_s) * 1000:.0f} bare_ms={statistics.median(bare_s) * 1000:.0f}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    asyncio.run(main(parser.parse_args()))
