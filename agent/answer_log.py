"""The answer log: one ``answers`` row per answer, complete enough to train on later."""

from __future__ import annotations

from kbot.db import Database
from kbot.db.models import Answer


async def record_answer(db: Database, row: Answer) -> None:
    async with db.session() as s:
        s.add(row)
