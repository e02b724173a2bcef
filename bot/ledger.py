"""What the chat server remembers in the SQL store, so that several replicas behave as one.

- **Dedupe**: an event is handled by whoever inserts its key first (``INSERT … ON CONFLICT DO
  NOTHING``); Slack's retries and duplicate deliveries find the key taken.
- **Leases**: a question's claim is held (``holder``, ``lease_until``) and renewed while it is
  answered, then settled ``answered`` or ``failed``. A claim whose lease ran out unsettled (its
  holder died) is taken over, by compare-and-set, by a retry's replica or a sweep
  (:meth:`orphans`), with what it takes to answer it (``payload``). A live holder renews in
  time, so nobody else ever takes it: at most one answer while it lives, one after it died.
- **Rate limit**: a person's accepted questions in the last minute, counted from the same rows;
  also per extra rate key (an anonymous web asker's hashed address), from a row per key.
- **Answer messages**: which chat messages show which answer, so a reaction on a message is a
  vote on its answer, and a reply in a thread kbot answered in is a follow-up.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, Literal

from sqlalchemy import delete, exists, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from kbot.db import Database
from kbot.db.models import Answer, AnswerMessage, InboundEvent, utcnow

log = logging.getLogger(__name__)
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
        holder: str = "",
        lease: timedelta = timedelta(seconds=30),
        payload: dict[str, Any] | None = None,
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

        The claim is ``holder``'s until ``lease`` from now. A claim already there whose lease ran
        out unsettled is taken over (``accepted``, not counted again).
        """
        actors = [actor, *dict.fromkeys(a for a in also if a != actor)]
        held = {"state": "working", "holder": holder, "lease_until": utcnow() + lease, "payload": payload}
        async with self._db.session() as s:
            if self._db.url.get_backend_name() == "postgresql":
                await self._lock(s, [f"kbot:questions:{platform}:{a}" for a in actors])
            if not await self._insert(s, key, platform=platform, kind="question", actor=actor, **held):
                return "accepted" if await self._take_over(s, key, held) else "duplicate"
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
                        .values(kind="limited", state=None, lease_until=None, payload=None)
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

    @staticmethod
    async def _take_over(s: AsyncSession, key: str, held: dict[str, Any]) -> bool:
        taken = await s.execute(
            update(InboundEvent)
            .where(
                InboundEvent.key == key,
                InboundEvent.state == "working",
                InboundEvent.lease_until < utcnow(),
            )
            .values(**held)
            .returning(InboundEvent.holder)
        )
        if taken.first() is None:
            return False
        log.warning("%s: its claim's lease ran out unanswered (holder gone); answering it here", key)
        return True

    async def renew(self, key: str, holder: str, lease: timedelta) -> bool:
        """Extend ``holder``'s claim on ``key``; False when it is no longer theirs."""
        async with self._db.session() as s:
            result = await s.execute(
                update(InboundEvent)
                .where(
                    InboundEvent.key == key, InboundEvent.holder == holder, InboundEvent.state == "working"
                )
                .values(lease_until=utcnow() + lease)
                .returning(InboundEvent.key)
            )
            return result.first() is not None

    async def settle(self, key: str, holder: str, state: Literal["answered", "failed"]) -> None:
        """End ``holder``'s claim; what it took to answer it is no longer kept."""
        async with self._db.session() as s:
            await s.execute(
                update(InboundEvent)
                .where(InboundEvent.key == key, InboundEvent.holder == holder)
                .values(state=state, lease_until=None, payload=None)
            )

    async def orphans(self, within: timedelta) -> list[tuple[str, dict[str, Any]]]:
        """Claims from the last ``within`` whose lease ran out unsettled, with their payloads."""
        now = utcnow()
        stmt = select(InboundEvent.key, InboundEvent.payload).where(
            InboundEvent.state == "working",
            InboundEvent.lease_until < now,
            InboundEvent.received_at >= now - within,
            InboundEvent.payload.is_not(None),
        )
        async with self._db.session() as s:
            return [(key, payload) for key, payload in (await s.execute(stmt)).all() if payload]

    async def _insert(
        self, s: AsyncSession, key: str, *, platform: str, kind: str, actor: str, **held: Any
    ) -> bool:
        stmt = (
            self._db.insert(InboundEvent)
            .values(key=key, platform=platform, kind=kind, actor=actor, received_at=utcnow(), **held)
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
