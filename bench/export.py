"""Feedback export at scale: 100k synthetic votes on 20k answers (2k distinct questions, several
wordings each) → DPO pairs, KTO and SFT rows, grouping near-duplicate questions by the vectors the
answer path recorded (the real bundled embedder makes them while populating, as answering would),
vs a bare read of the same rows from the same SQLite file. Goal: export ≤ 10 s.

    python bench/export.py [--votes N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import insert, select

from finetune.export import ExportOptions, export_feedback
from kbot.db import Database
from kbot.db.models import Answer, Vote
from knowledge.embeddings import SentenceTransformerEmbedder

TOPICS = [
    "annual leave",
    "sick leave",
    "parental leave",
    "meal allowance",
    "hotel limit",
    "laptop loss",
    "password rules",
    "remote work",
    "training budget",
    "overtime pay",
]


async def populate(
    db: Database, votes: int, rng: random.Random, embedder: SentenceTransformerEmbedder
) -> None:
    answers_n = votes // 5
    questions = [
        f"{verb} {topic} {n}?"
        for n in range(answers_n // 10 // len(TOPICS) + 1)
        for topic in TOPICS
        for verb in ("What is the rule for",)
    ][: answers_n // 10]
    base = datetime(2026, 11, 1, tzinfo=UTC)
    # The answer path records each question's vector (it embeds the question anyway); so does this.
    wordings = [q + w for q in questions for w in ("", " please", " exactly")]
    recorded = dict(zip(wordings, embedder.embed(wordings).round(5).tolist(), strict=True))
    answer_rows, vote_rows = [], []
    for i in range(answers_n):
        q = questions[i % len(questions)]
        wording = ("", " please", " exactly")[i % 3]  # near-duplicates of one question
        good = (i // len(questions)) % 2 == 0  # each question gets good and bad answers
        answer_id = str(uuid.uuid4())
        answer_rows.append(
            {
                "id": answer_id,
                "created_at": base + timedelta(seconds=i),
                "platform": "slack",
                "asker": f"U{i % 300}",
                "channel": "C1",
                "thread": answer_id,
                "collections": ["hr"],
                "question": q + wording,
                "search_query": q,
                "messages": [
                    {"role": "system", "content": "Answer from the sources."},
                    {"role": "user", "content": f'Sources:\n[1] Handbook: "{q}"\n\nQuestion: {q}{wording}'},
                ],
                "retrieved": [
                    {"chunk_id": f"c{i % len(questions)}", "score": 1.0, "source": "hr.md", "used": True}
                ],
                "answer": f"Answer {i} [1]." if good else f"Unsure about {i}.",
                "citations": [],
                "status": "ok",
                "error": "",
                "base_model": "m",
                "adapter_version": None,
                "latency_ms": 100,
                "question_vector": recorded[q + wording],
                "embedding_model": embedder.name,
                "restricted": False,
            }
        )
        for v in range(5):
            value = 1 if (good or rng.random() < 0.1) else -1
            vote_rows.append(
                {
                    "answer_id": answer_id,
                    "platform": "slack",
                    "voter": f"U{(i * 5 + v) % 5000}",
                    "value": value,
                    "origin": "button",
                    "comment": "",
                    "created_at": base + timedelta(seconds=i),
                    "updated_at": base + timedelta(seconds=i),
                }
            )
    async with db.session() as s:
        for start in range(0, len(answer_rows), 2000):
            await s.execute(insert(Answer), answer_rows[start : start + 2000])
        for start in range(0, len(vote_rows), 5000):
            await s.execute(insert(Vote), vote_rows[start : start + 5000])


async def bare_read(db: Database) -> int:
    async with db.session() as s:
        votes = (await s.execute(select(Vote.answer_id, Vote.value, Vote.voter))).all()
        answers = (await s.execute(select(Answer.id, Answer.messages, Answer.answer, Answer.question))).all()
    return len(votes) + len(answers)


async def main(args: argparse.Namespace) -> None:
    folder = Path(tempfile.mkdtemp(prefix="kbot-bench-export-"))
    db = Database(f"sqlite+aiosqlite:///{folder / 'kbot.db'}")
    await db.migrate()
    embedder = SentenceTransformerEmbedder("all-MiniLM-L6-v2")
    embedder.embed(["warm up"])
    print(f"populating {args.votes:,} votes …", flush=True)
    await populate(db, args.votes, random.Random(0), embedder)
    started = time.perf_counter()
    rows = await bare_read(db)
    bare_s = time.perf_counter() - started
    started = time.perf_counter()
    result = await export_feedback(
        db, ExportOptions(max_votes_per_user=1000), embed=embedder.embed, embed_model=embedder.name
    )
    export_s = time.perf_counter() - started
    await db.close()
    print(result.summary())
    print(
        f"bare read of {rows:,} rows: {bare_s:.2f} s;  kbot export: {export_s:.2f} s  "
        f"({export_s / bare_s:.1f}x the bare read; goal ≤ 10 s -> {'met' if export_s <= 10 else 'NOT met'})"
    )
    print(
        f"RESULT export_s={export_s:.2f} bare_read_s={bare_s:.2f} export_vs_read={export_s / bare_s:.2f} "
        f"votes={args.votes} pairs={len(result.dpo)} goal_s=10"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--votes", type=int, default=100_000)
    asyncio.run(main(parser.parse_args()))
