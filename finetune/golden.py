"""The golden set the evaluation gate judges candidates on: ``KBOT_DATA_DIR/golden.jsonl``.

Each line is ``{"question", "collections", "facts"}`` (see :mod:`finetune.evaluate`). People add
questions by hand (``kbot golden add``) or from approved corrections
(``kbot golden from-corrections``): a reviewer has vouched for the text, and its quantities
("10 days", "NT$3,000", "十天") are the facts a good answer must state. A question already in the
set (same text after normalising) is not added twice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from agent.numbers import fold, quantities
from finetune.export import normalise
from kbot.db import Database
from kbot.db.models import Answer, Correction
from kbot.errors import ConfigError


def golden_path(data_dir: Path) -> Path:
    return data_dir / "golden.jsonl"


def read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    try:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except ValueError as exc:
        raise ConfigError(f"{path} is not JSON lines: {exc}") from exc


def add(path: Path, question: str, collections: list[str], facts: list[str]) -> bool:
    """Append one golden question; False when the set already has it."""
    question, facts = question.strip(), [f.strip() for f in facts if f.strip()]
    if not question:
        raise ConfigError("A golden question needs its text.")
    if not facts:
        raise ConfigError(
            'A golden question needs at least one fact a right answer states (--fact "10 days").'
        )
    if not collections:
        raise ConfigError("Name the collection(s) the question is about (-c hr).")
    known = {normalise(str(r.get("question", ""))) for r in read_rows(path)}
    if normalise(question) in known:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    row = {"question": question, "collections": collections, "facts": facts}
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return True


def facts_in(text: str) -> list[str]:
    """The quantities ``text`` states, as written there: the facts a golden answer must state."""
    folded = fold(text)
    return list(dict.fromkeys(folded[q.start : q.end].strip() for q in quantities(folded)))


@dataclass
class FromCorrections:
    added: int = 0
    known: int = 0
    without_facts: int = 0


async def from_corrections(db: Database, path: Path) -> FromCorrections:
    """Add the question of every approved correction that states a quantity."""
    outcome = FromCorrections()
    async with db.session() as s:
        rows = (
            await s.execute(
                select(Correction, Answer)
                .join(Answer, Correction.answer_id == Answer.id)
                .where(Correction.status == "approved")
                .order_by(Correction.reviewed_at, Correction.id)
            )
        ).all()
    for correction, answer in rows:
        facts = facts_in(correction.approved_text or correction.text)
        if not facts:
            outcome.without_facts += 1
        elif add(path, answer.question, list(answer.collections), facts):
            outcome.added += 1
        else:
            outcome.known += 1
    return outcome
