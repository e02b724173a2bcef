"""The vote log and the chat ledger, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bot.ledger import ChatLedger
from finetune.votes import VoteLog
from kbot.db import Database
from kbot.db.models import Answer
from kbot.errors import FeedbackError


async def _answer(db: Database) -> str:
    answer_id = str(uuid.uuid4())
    async with db.session() as s:
        s.add(
            Answer(
                id=answer_id,
                platform="slack",
                asker="U1",
                channel="C1",
                thread="1.1",
                collections=["hr"],
                question="q",
                search_query="q",
                messages=[],
                retrieved=[],
                answer="a",
                citations=[],
                status="ok",
                base_model="m",
                latency_ms=1,
            )
        )
    return answer_id


async def test_one_live_vote_per_person_and_answer(database: Database) -> None:
    log = VoteLog(database)
    a, b = await _answer(database), await _answer(database)
    await log.vote(answer_id=a, platform="slack", voter="U1", value=1, origin="reaction")
    await log.vote(answer_id=a, platform="slack", voter="U1", value=-1, origin="button")
    await log.vote(answer_id=b, platform="slack", voter="U1", value=1, origin="reaction")
    await log.vote(answer_id=a, platform="slack", voter="U2", value=1, origin="reaction")
    assert {(v.answer_id, v.voter, v.value, v.origin) for v in await log.votes()} == {
        (a, "U1", -1, "button"),
        (b, "U1", 1, "reaction"),
        (a, "U2", 1, "reaction"),
    }
    assert not await log.unvote(answer_id=a, voter="U1", value=1)  # not the live value: kept
    assert await log.unvote(answer_id=a, voter="U1", value=-1)
    assert await log.unvote(answer_id=b, voter="U1")
    assert {(v.answer_id, v.voter) for v in await log.votes()} == {(a, "U2")}


async def test_vote_comments_follow_the_vote(database: Database) -> None:
    log = VoteLog(database)
    a = await _answer(database)
    await log.vote(answer_id=a, platform="teams", voter="X", value=-1, origin="feedback", comment="outdated")
    await log.vote(answer_id=a, platform="teams", voter="X", value=-1, origin="reaction")
    assert (await log.votes(a))[0].comment == "outdated"  # same value, no new comment: kept
    await log.vote(answer_id=a, platform="teams", voter="X", value=1, origin="reaction")
    assert (await log.votes(a))[0].comment == ""  # flipped: the old reason no longer applies


async def test_corrections_replace_per_author(database: Database) -> None:
    log = VoteLog(database)
    a = await _answer(database)
    await log.correct(answer_id=a, platform="slack", author="U1", text="first")
    await log.correct(answer_id=a, platform="slack", author="U1", text="  better  ")
    await log.correct(answer_id=a, platform="slack", author="U2", text="other")
    assert sorted((c.author, c.text) for c in await log.corrections(a)) == [("U1", "better"), ("U2", "other")]


async def test_feedback_written_late_never_undoes_newer_feedback(database: Database) -> None:
    """Feedback kept on disk during an outage is written later with the time it was given: it
    replaces only what is older (another server may have written a newer vote meanwhile)."""
    votes, answer_id = VoteLog(database), await _answer(database)
    now = datetime.now(UTC)
    await votes.vote(answer_id=answer_id, platform="slack", voter="U2", value=-1, origin="button")
    before = now - timedelta(minutes=5)
    await votes.vote(answer_id=answer_id, platform="slack", voter="U2", value=1, origin="button", at=before)
    [live] = await votes.votes(answer_id)
    assert live.value == -1  # the newer 👎 stands
    assert not await votes.unvote(answer_id=answer_id, voter="U2", value=-1, at=before)
    assert await votes.unvote(answer_id=answer_id, voter="U2", value=-1, at=now + timedelta(seconds=5))
    await votes.vote(answer_id=answer_id, platform="slack", voter="U3", value=1, origin="button", at=before)
    [late] = await votes.votes(answer_id)  # nothing newer to beat: written, with its own time
    assert late.value == 1 and abs((late.updated_at.replace(tzinfo=UTC) - before).total_seconds()) < 1
    await votes.correct(answer_id=answer_id, platform="slack", author="U2", text="Ten days.")
    await votes.correct(answer_id=answer_id, platform="slack", author="U2", text="Five days.", at=before)
    assert [c.text for c in await votes.corrections(answer_id)] == ["Ten days."]


async def test_bad_feedback_is_a_clear_error(database: Database) -> None:
    log = VoteLog(database)
    a = await _answer(database)
    with pytest.raises(FeedbackError, match="no answer 'nope'"):
        await log.vote(answer_id="nope", platform="slack", voter="U1", value=1, origin="button")
    with pytest.raises(FeedbackError, match=r"\+1 or -1"):
        await log.vote(answer_id=a, platform="slack", voter="U1", value=2, origin="button")
    with pytest.raises(FeedbackError, match="needs some text"):
        await log.correct(answer_id=a, platform="slack", author="U1", text="  ")
    assert await log.votes() == [] and await log.corrections() == []


async def test_sqlite_readers_are_not_blocked_by_a_writer(tmp_path: Path) -> None:
    """The server keeps reading while another process (ingest, nightly) holds a write open."""
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'kbot.db'}")
    await db.migrate()
    await db.close()
    writer = sqlite3.connect(tmp_path / "kbot.db", isolation_level=None)
    try:
        # EXCLUSIVE shuts readers out of a rollback-journal file; in WAL mode they read on.
        writer.execute("BEGIN EXCLUSIVE")
        writer.execute(
            "INSERT INTO inbound_events (key, platform, kind, actor, received_at)"
            " VALUES ('w', 's', 'event', 'U', '2026-01-01')"
        )
        reader = sqlite3.connect(tmp_path / "kbot.db", timeout=0)
        assert reader.execute("SELECT count(*) FROM inbound_events").fetchone() == (0,)
        reader.close()
    finally:
        writer.execute("ROLLBACK")
        writer.close()


async def test_concurrent_claims_across_replicas_have_one_winner(sql_url: str, database: Database) -> None:
    """Several server replicas (own engines, same database) receive the same event at once."""
    replicas = [Database(sql_url) for _ in range(4)]
    try:
        ledgers = [ChatLedger(db) for db in replicas]
        won = await asyncio.gather(
            *(
                ledger.claim("slack:event:Ev1", platform="slack", actor="U1")
                for ledger in ledgers
                for _ in range(3)
            )
        )
        assert sum(won) == 1
        asked = await asyncio.gather(
            *(
                ledger.claim_question(
                    "slack:msg:C1:1.1", platform="slack", actor="U1", window=timedelta(minutes=1), limit=5
                )
                for ledger in ledgers
            )
        )
        assert sorted(asked) == ["accepted", "duplicate", "duplicate", "duplicate"]
    finally:
        for db in replicas:
            await db.close()


async def test_rate_limit_is_exact_under_concurrency(sql_url: str, database: Database) -> None:
    replicas = [Database(sql_url) for _ in range(3)]
    try:
        window = timedelta(minutes=1)
        ledgers = [ChatLedger(db) for db in replicas]
        claims = await asyncio.gather(
            *(
                ledgers[i % 3].claim_question(
                    f"slack:msg:C1:{i}", platform="slack", actor="U7", window=window, limit=5
                )
                for i in range(9)
            )
        )
        # Nine at once from three replicas: exactly the limit gets through, never more or fewer.
        assert sorted(claims) == ["accepted"] * 5 + ["limited"] * 4
    finally:
        for db in replicas:
            await db.close()


async def test_answer_messages_and_threads(database: Database) -> None:
    ledger = ChatLedger(database)
    a = await _answer(database)
    await ledger.record_messages(a, platform="slack", channel="C1", message_ids=["1.2", "1.3"])
    await ledger.record_messages(a, platform="slack", channel="C1", message_ids=["1.2"])  # idempotent
    assert await ledger.answer_for_message(platform="slack", channel="C1", message_id="1.3") == a
    assert await ledger.answer_for_message(platform="slack", channel="C2", message_id="1.3") is None
    assert await ledger.answered_in_thread(platform="slack", channel="C1", thread="1.1")
    assert not await ledger.answered_in_thread(platform="slack", channel="C1", thread="9.9")
    assert await ledger.prune(timedelta(0)) == 0
    await ledger.claim("k", platform="slack", actor="U1")
    await asyncio.sleep(0.01)
    assert await ledger.prune(timedelta(0)) == 1


async def test_limited_questions_do_not_count_against_later_ones(database: Database) -> None:
    ledger = ChatLedger(database)
    window = timedelta(seconds=1)

    async def ask(n: int) -> str:
        return await ledger.claim_question(f"q{n}", platform="slack", actor="U1", window=window, limit=2)

    assert await ask(1) == "accepted"
    await asyncio.sleep(0.6)
    assert [await ask(2), await ask(3)] == ["accepted", "limited"]
    assert await ask(2) == "duplicate"
    await asyncio.sleep(0.5)  # q1 has left the window; q2 and the refused q3 have not
    assert await ask(4) == "accepted"  # only q2 and q4 count
    assert (
        await ledger.claim_question("q5", platform="slack", actor="U2", window=window, limit=0) == "accepted"
    )
