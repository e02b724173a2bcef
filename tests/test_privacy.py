"""Erasure (`kbot forget`) and retention, on SQLite and PostgreSQL: nothing of the person is left
in any table or in conversation memory; everyone else's data stays."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from bot import privacy
from bot.slack import render
from kbot.db.models import Answer, Base, Correction, Vote
from kbot.errors import ConfigError
from knowledge.embeddings import Embedder
from tests.fake_slack import wait_until
from tests.slack_env import SlackEnv, mention, message, slack_env
from tests.test_slack import click

GONE = "U0FORGETME"
STAYS = "U0STAYS"
SICK = "How many days of sick leave do I get?"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def env(request: pytest.FixtureRequest, tmp_path: Path, embedder: Embedder) -> AsyncIterator[SlackEnv]:
    url = {} if request.param == "sqlite" else {"database_url": request.getfixturevalue("own_postgres")}
    async with slack_env(tmp_path, embedder, corrections="trust", **url) as e:
        yield e


async def everything(env: SlackEnv) -> str:
    """Every row of every table, as text."""
    out = []
    async with env.runtime.service.answerer.kb.db.session() as s:
        for table in Base.metadata.sorted_tables:
            for row in (await s.execute(select(table))).all():
                out.append(json.dumps([str(v) for v in row], ensure_ascii=False))
    return "\n".join(out)


async def memory(env: SlackEnv, thread: str) -> bool:
    checkpoint = await env.runtime.service.answerer.checkpointer.aget_tuple(
        {"configurable": {"thread_id": thread}}
    )
    return checkpoint is not None


async def converse(env: SlackEnv) -> tuple[str, str]:
    """GONE asks in a channel thread and in a DM; STAYS asks; each votes on the other's answer,
    and GONE writes a correction (approved on arrival) on STAYS's answer."""
    await env.event(mention(SICK, user=GONE, ts="1700000000.000100"))
    await env.event(message("Do I need a doctor's note?", user=GONE, channel="D9", channel_type="im"))
    await env.event(mention("How many vacation days do I get?", user=STAYS, ts="1700000000.000200"))
    await wait_until(lambda: env.stats["answered"] == 3)
    shown = {m["thread_ts"]: m for m in env.shown()}
    async with env.runtime.service.answerer.kb.db.session() as s:
        ids = {a.asker + a.channel: a.id for a in await s.scalars(select(Answer))}
    theirs, mine = ids[STAYS + "C1"], ids[GONE + "C1"]
    await env.interact(click(render.VOTE_UP, theirs, shown["1700000000.000200"]["ts"], user=GONE))
    await env.interact(click(render.VOTE_DOWN, mine, shown["1700000000.000100"]["ts"], user=STAYS))
    await wait_until(lambda: env.stats["feedback_recorded"] == 2)
    from bot.conversation import FeedbackEvent

    await env.runtime.service.feedback(
        FeedbackEvent(platform="slack", user=GONE, kind="correction", answer_id=theirs, channel="C1",
                      message_id=shown["1700000000.000200"]["ts"], origin="button",
                      text="Vacation: 25 days a year [1].")
    )  # fmt: skip
    return theirs, mine


async def test_forget_leaves_nothing_of_the_person_and_everything_else(env: SlackEnv) -> None:
    theirs, _mine = await converse(env)
    answerer = env.runtime.service.answerer
    assert GONE in await everything(env)
    assert await memory(env, "slack:C1:1700000000.000100") and await memory(env, "slack:D9:D9")
    vacation = "How many vacation days do I get?"
    assert await answerer.verified.match(vacation, ["handbook"], []) is not None  # GONE's correction

    spool = env.runtime.service.spool
    assert spool is not None  # as if the store had failed: their vote waits on disk, and STAYS's
    for user in (GONE, STAYS):
        spool.put({"platform": "slack", "user": user, "kind": "vote", "answer_id": theirs, "value": 1})
    erased = await privacy.forget(answerer, f"slack:{GONE}")
    assert erased.waiting == 1
    waiting = "".join(p.read_text() for p in spool.folder.glob("feedback*.jsonl"))
    assert GONE not in waiting and STAYS in waiting
    assert (erased.answers, erased.conversations) == (2, 2)
    assert erased.votes == 2 and erased.corrections == 1  # theirs, and STAYS's vote on their answer
    assert GONE not in await everything(env)  # no table holds the id any more
    assert not await memory(env, "slack:C1:1700000000.000100") and not await memory(env, "slack:D9:D9")
    # STAYS's question, answer and thread memory are untouched; GONE's correction no longer answers.
    async with answerer.kb.db.session() as s:
        assert [a.id for a in await s.scalars(select(Answer))] == [theirs]
        assert list(await s.scalars(select(Vote))) == [] and list(await s.scalars(select(Correction))) == []
    assert await memory(env, "slack:C1:1700000000.000200")
    assert await answerer.verified.match(vacation, ["handbook"], []) is None
    # Nothing left: a second time erases nothing; a malformed person is a plain error.
    assert (
        str(await privacy.forget(answerer, f"slack:{GONE}"))
        == "0 answers, 0 votes, 0 corrections, 0 events, 0 conversations, 0 waiting"
    )
    with pytest.raises(ConfigError, match="PLATFORM:ID"):
        await privacy.forget(answerer, GONE)


async def test_retention_removes_old_answers_but_not_the_ones_a_verified_answer_rests_on(
    env: SlackEnv,
) -> None:
    theirs, mine = await converse(env)
    answerer = env.runtime.service.answerer
    async with answerer.kb.db.session() as s:  # everything happened 40 days ago
        await s.execute(update(Answer).values(created_at=datetime.now(UTC) - timedelta(days=40)))
    erased = await privacy.expire(answerer, 30)
    assert erased.answers == 2  # GONE's two; STAYS's has the approved correction
    async with answerer.kb.db.session() as s:
        assert [a.id for a in await s.scalars(select(Answer))] == [theirs]
    assert mine not in await everything(env)
    assert not await memory(env, "slack:D9:D9") and await memory(env, "slack:C1:1700000000.000200")
    assert (await privacy.expire(answerer, 30)).answers == 0
