"""What the chat server remembers in the SQL store, so that several replicas behave as one.

- **Dedupe**: an event is handled by whoever inserts its key first (``INSERT … ON CONFLICT DO
  NOTHING``); Slack's retries and duplicate deliveries find the key taken.
- **Rate limit**: a person's accepted questions in the last minute, counted from the same rows.
- **Answer messages**: which chat messages show which answer, so a reaction on a message is a
  vote on its answer, and a reply in a thread kbot answered in is a follow-up.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy import delete, exists, func, select

from kbot.db import Database
from kbot.db.models import Answer, AnswerMessage, InboundEvent, utcnow


class ChatLedger:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def claim(self, key: str, *, platform: str, kind: str, actor: str) -> bool:
        """True for the first caller with ``key``, on any replica; False for every later one."""
        stmt = (
            self._db.insert(InboundEvent)
            .values(key=key, platform=platform, kind=kind, actor=actor, received_at=utcnow())
            .on_conflict_do_nothing(index_elements=["key"])
        )
        async with self._db.session() as s:
            result = await s.execute(stmt)
        return bool(getattr(result, "rowcount", 0))

    async def questions_in_last(self, window: timedelta, *, platform: str, actor: str) -> int:
        since = utcnow() - window
        stmt = select(func.count()).where(
            InboundEvent.platform == platform,
            InboundEvent.actor == actor,
            InboundEvent.kind == "question",
            InboundEvent.received_at >= since,
        )
        async with self._db.session() as s:
            return int(await s.scalar(stmt) or 0)

    async def prune(self, older_than: timedelta) -> int:
        """Forget events older than any retry could be (Slack retries within minutes)."""
        async with self._db.session() as s:
            result = await s.execute(
                delete(InboundEvent).where(InboundEvent.received_at < utcnow() - older_than)
            )
        return int(getattr(result, "rowcount", 0))

    async def record_messages(
        self, answer_id: str, *, platform: str, channel: str, message_ids: Sequence[str]
    ) -> None:
        if not message_ids:
            return
        stmt = self._db.insert(AnswerMessage).values(
            [
                {"platform": platform, "channel": channel, "message_id": m, "answer_id": answer_id}
                for m in message_ids
            ]
        )
        stmt = stmt.on_conflict_do_nothing(index_elements=["platform", "channel", "message_id"])
        async with self._db.session() as s:
            await s.execute(stmt)

    async def answer_for_message(self, *, platform: str, channel: str, message_id: str) -> str | None:
        stmt = select(AnswerMessage.answer_id).where(
            AnswerMessage.platform == platform,
            AnswerMessage.channel == channel,
            AnswerMessage.message_id == message_id,
        )
        async with self._db.session() as s:
            return await s.scalar(stmt)

    async def answered_in_thread(self, *, platform: str, channel: str, thread: str) -> bool:
        stmt = select(
            exists().where(Answer.platform == platform, Answer.channel == channel, Answer.thread == thread)
        )
        async with self._db.session() as s:
            return bool(await s.scalar(stmt))
