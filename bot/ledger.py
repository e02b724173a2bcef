"""What the chat server remembers in the SQL store, so that several replicas behave as one.

- **Dedupe**: an event is handled by whoever inserts its key first (``INSERT … ON CONFLICT DO
  NOTHING``); Slack's retries and duplicate deliveries find the key taken.
- **Rate limit**: a person's accepted questions in the last minute, counted from the same rows;
  also per extra rate key (an anonymous web asker's hashed address), from a row per key.
- **Answer messages**: which chat messages show which answer, so a reaction on a message is a
  vote on its answer, and a reply in a thread kbot answered in is a follow-up.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import timedelta
from typing import Literal

from sqlalchemy import delete, exists, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from kbot.db import Database
from kbot.db.models import Answer, AnswerMessage, InboundEvent, utcnow

Claim = Literal["accepted", "duplicate", "limited"]


class ChatLedger:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def claim(self, key: str, *, platform: str, actor: str) -> bool:
        """True for the first caller with event ``key``, on any replica; False for every later one."""
        async with self._db.session() as s:
            return await self._insert(s, key, platform=platform, kind="event", actor=actor)

    async def claim_question(
        self,
        key: str,
        *,
        platform: str,
        actor: str,
        window: timedelta,
        limit: int,
        also: Sequence[str] = (),
    ) -> Claim:
        """Claim a question: ``duplicate`` if another delivery already did; ``limited`` if it
        would be question number ``limit + 1`` or more in the last ``window`` (0 = no limit) of
        ``actor`` or of any rate key in ``also`` (an anonymous asker's address: new cookies are
        free, addresses are not); else ``accepted``. Limited questions do not count against
        later ones.

        Each key in ``also`` gets a row of its own (key: a hash of the question's key and that
        rate key; actor: the rate key), counted like the person's. The count is exact under
        concurrency because it runs in the claim's transaction while the claims of each key are
        serialised: SQLite has one writer at a time, and PostgreSQL takes a transaction-scoped
        advisory lock on each key (in one order, so two claims sharing keys never deadlock).
        """
        actors = [actor, *dict.fromkeys(a for a in also if a != actor)]
        async with self._db.session() as s:
            if self._db.url.get_backend_name() == "postgresql":
                await self._lock(s, [f"kbot:questions:{platform}:{a}" for a in actors])
            if not await self._insert(s, key, platform=platform, kind="question", actor=actor):
                return "duplicate"
            keys = {actor: key}
            for extra in actors[1:]:
                keys[extra] = _rate_row_key(key, extra)
                await self._insert(s, keys[extra], platform=platform, kind="question", actor=extra)
            if not limit:
                return "accepted"
            for who in actors:
                count = await s.scalar(
                    select(func.count()).where(
                        InboundEvent.platform == platform,
                        InboundEvent.actor == who,
                        InboundEvent.kind == "question",
                        InboundEvent.received_at >= utcnow() - window,
                    )
                )
                if int(count or 0) > limit:
                    await s.execute(
                        update(InboundEvent)
                        .where(InboundEvent.key.in_(list(keys.values())))
                        .values(kind="limited")
                    )
                    return "limited"
            return "accepted"

    @staticmethod
    async def _lock(s: AsyncSession, names: list[str]) -> None:
        """Advisory locks on ``names``, taken in the order of their lock ids."""
        params = {f"n{i}": name for i, name in enumerate(names)}
        hashes = ", ".join(f"hashtext(:{p})" for p in params)
        ids = sorted(set((await s.execute(text(f"SELECT {hashes}"), params)).one()))
        for lock_id in ids:
            await s.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": lock_id})

    async def _insert(self, s: AsyncSession, key: str, *, platform: str, kind: str, actor: str) -> bool:
        stmt = (
            self._db.insert(InboundEvent)
            .values(key=key, platform=platform, kind=kind, actor=actor, received_at=utcnow())
            .on_conflict_do_nothing(index_elements=["key"])
            .returning(InboundEvent.key)
        )
        # RETURNING, not rowcount: drivers disagree on rowcount for a skipped upsert.
        return (await s.execute(stmt)).first() is not None

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

    async def answered_in_thread(
        self, *, platform: str, channel: str, thread: str, asker: str | None = None
    ) -> bool:
        """Whether kbot answered in this thread (someone's question, or ``asker``'s when given)."""
        where = [Answer.platform == platform, Answer.channel == channel, Answer.thread == thread]
        if asker is not None:
            where.append(Answer.asker == asker)
        stmt = select(exists().where(*where))
        async with self._db.session() as s:
            return bool(await s.scalar(stmt))


def _rate_row_key(key: str, rate_key: str) -> str:
    """The row that counts question ``key`` against ``rate_key``: fixed length, whatever ``key`` is."""
    return "rate:" + hashlib.sha256(f"{key}\n{rate_key}".encode()).hexdigest()[:40]
