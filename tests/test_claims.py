"""Every question answered, once: a claim's lease, its renewal, its takeover when the holder died."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from sqlalchemy import select

from bot.claims import Claims
from bot.conversation import IncomingMessage
from bot.ledger import ChatLedger
from kbot.db import Database
from kbot.db.models import InboundEvent

WINDOW = timedelta(minutes=1)
MESSAGE = IncomingMessage(
    platform="slack", key="slack:msg:C1:1.1", user="U1", channel="C1", thread="1.1", text="hi",
    addressed=True, identities=("T1",),
)  # fmt: skip


async def claim(ledger: ChatLedger, holder: str, lease: timedelta, key: str = MESSAGE.key) -> str:
    payload = Claims.payload(MESSAGE, {"thread_ts": "1.1", "team": "T1"})
    return await ledger.claim_question(
        key, platform="slack", actor="U1", window=WINDOW, limit=5, holder=holder, lease=lease, payload=payload
    )


async def test_a_live_claim_is_never_taken_an_expired_one_is_taken_once(database: Database) -> None:
    ledger = ChatLedger(database)
    assert await claim(ledger, "a", timedelta(seconds=30)) == "accepted"
    assert await claim(ledger, "b", timedelta(seconds=30)) == "duplicate"  # a is alive: never twice
    assert await ledger.orphans(timedelta(minutes=10)) == []
    # a stops renewing (it died): its lease runs out, and exactly one of three replicas takes over.
    assert await ledger.renew(MESSAGE.key, "a", timedelta(seconds=-1))
    [(key, payload)] = await ledger.orphans(timedelta(minutes=10))
    assert key == MESSAGE.key and payload["resume"] == {"thread_ts": "1.1", "team": "T1"}
    won = await asyncio.gather(*(claim(ledger, h, timedelta(seconds=30)) for h in ("b", "c", "d")))
    assert sorted(won) == ["accepted", "duplicate", "duplicate"]
    assert not await ledger.renew(MESSAGE.key, "a", timedelta(seconds=30))  # a's claim is gone
    async with database.session() as s:
        row = await s.get(InboundEvent, MESSAGE.key)
        assert row is not None and row.holder in ("b", "c", "d")
        holder = row.holder
    await ledger.settle(MESSAGE.key, holder, "answered")
    assert await claim(ledger, "e", timedelta(seconds=-1)) == "duplicate"  # settled: done for good
    async with database.session() as s:
        row = await s.get(InboundEvent, MESSAGE.key)
        assert row is not None and (row.state, row.payload, row.lease_until) == ("answered", None, None)


async def test_claims_renew_while_held_and_settle_failed_on_error(database: Database) -> None:
    ledger = ChatLedger(database)
    claims = Claims(ledger, lease_s=0.3)  # renewed every 0.1 s
    assert await claim(ledger, claims.holder, claims.lease) == "accepted"
    async with claims.held(MESSAGE.key):
        await asyncio.sleep(0.8)  # longer than the lease: renewals keep it
        assert await claim(ledger, "other", claims.lease) == "duplicate"
    try:
        assert await claim(ledger, claims.holder, claims.lease, key="k2") == "accepted"
        async with claims.held("k2"):
            raise RuntimeError("the model failed")
    except RuntimeError:
        pass
    async with database.session() as s:
        states = dict((await s.execute(select(InboundEvent.key, InboundEvent.state))).all())
    assert states == {MESSAGE.key: "answered", "k2": "failed"}


async def test_orphans_come_back_as_the_messages_they_were(database: Database) -> None:
    ledger = ChatLedger(database)
    claims = Claims(ledger, lease_s=30)
    assert await claim(ledger, "dead", timedelta(seconds=-1)) == "accepted"
    [(message, resume)] = await claims.orphans()
    assert message == MESSAGE and resume == {"thread_ts": "1.1", "team": "T1"}
    # A rate-limited question is no claim to take over.
    for n in range(6):
        await claim(ledger, "dead", timedelta(seconds=-1), key=f"q{n}")
    orphaned = {key for key, _ in await ledger.orphans(timedelta(minutes=10))}
    assert orphaned == {MESSAGE.key, "q0", "q1", "q2", "q3"}  # q4 and q5 were over the limit of 5
