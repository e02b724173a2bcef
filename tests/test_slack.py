"""Slack end to end: signed requests into `kbot serve`'s app, a fake Slack Web API recording replies.

The model is an OpenAI-compatible fake (the real OpenAIBackend talks to it); retrieval, the
answer log, the vote log and the dedupe ledger are the real ones on SQLite + Qdrant Edge.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from bot.slack import render
from kbot.db.models import Answer, AnswerMessage, Correction, Vote
from knowledge.embeddings import Embedder
from tests.fake_slack import BOT_ID, BOT_USER, TEAM, event_body, sign, wait_until
from tests.slack_env import WIKI, SlackEnv, blocks_text, mention, message, slack_env

QUESTION = "How many days of sick leave do I get?"


@pytest.fixture
async def env(tmp_path: Path, embedder: Embedder) -> SlackEnv:  # type: ignore[misc]
    async with slack_env(tmp_path, embedder, rate_limit_per_minute=5) as e:
        yield e


async def rows(env: SlackEnv, model: type) -> list:  # type: ignore[type-arg]
    async with env.runtime.service.ledger._db.session() as s:
        return list((await s.scalars(select(model))).all())


# --- request verification ---


async def test_bad_signature_is_rejected_and_nothing_runs(env: SlackEnv) -> None:
    body = event_body(mention(QUESTION), "EvBAD")
    headers = {**sign(body, secret="not-the-secret"), "Content-Type": "application/json"}
    response = await env.client.post("/slack/events", data=body, headers=headers)
    assert response.status == 401
    unsigned = await env.client.post("/slack/events", data=body, headers={"Content-Type": "application/json"})
    assert unsigned.status == 401
    await asyncio.sleep(0.3)
    assert env.slack.named("chat.postMessage") == [] and not env.stats
    assert await rows(env, Answer) == []


async def test_stale_timestamp_is_rejected(env: SlackEnv) -> None:
    body = event_body(mention(QUESTION), "EvOLD")
    old = int(time.time()) - 6 * 60  # Slack's replay window is 5 minutes
    headers = {**sign(body, timestamp=old), "Content-Type": "application/json"}
    assert (await env.client.post("/slack/events", data=body, headers=headers)).status == 401
    fresh = int(time.time()) - 4 * 60
    headers = {**sign(body, timestamp=fresh), "Content-Type": "application/json"}
    assert (await env.client.post("/slack/events", data=body, headers=headers)).status == 200


async def test_url_verification_echoes_the_challenge(env: SlackEnv) -> None:
    body = json.dumps(
        {
            "token": "x",
            "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P",
            "type": "url_verification",
        }
    )
    response = await env.send(body)
    assert response.status == 200
    assert "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P" in await response.text()


async def test_malformed_signed_payload_is_a_4xx(env: SlackEnv) -> None:
    response = await env.send("{not json")
    assert 400 <= response.status < 500
    assert not env.stats


async def test_health_check(env: SlackEnv) -> None:
    response = await env.client.get("/healthz")
    assert response.status == 200
    assert await response.json() == {"status": "ok", "slack": True, "teams": "off"}


# --- questions ---


async def test_mention_gets_one_threaded_answer_with_citations(env: SlackEnv) -> None:
    event = mention(QUESTION, ts="1700000000.000001")
    response = await env.event(event)
    assert response.status == 200
    await wait_until(lambda: env.stats["answered"] == 1)

    # Slack's AI streaming: the status while working, one streamed reply in the mention's thread
    # (to the asker, in their team), the sources and feedback controls added when it stops.
    assert env.posted() == [] and env.slack.named("chat.update") == []
    [start] = [c.params for c in env.slack.named("chat.startStream")]
    assert (start["channel"], start["thread_ts"]) == ("C1", "1700000000.000001")
    assert (start["recipient_user_id"], start["recipient_team_id"]) == ("U1", TEAM)
    [final] = env.shown()
    assert final["native"] and final["stopped"] and final["ts"] == start["_ts"]
    shown = blocks_text(final)
    assert final["text"].startswith("Sick leave is 10 days per year [[1]](")  # [1] links to its source
    assert "*Sources*" in shown and "Leave policy" in shown
    assert f"{WIKI}leave-policy.md" in shown  # the citation links to its source
    assert "10 days of paid sick leave" in shown  # with the quote that holds the fact
    [answer] = await rows(env, Answer)
    assert (answer.platform, answer.channel, answer.thread, answer.asker) == (
        "slack",
        "C1",
        event["ts"],
        "U1",
    )
    assert answer.question == QUESTION  # the mention is stripped
    assert answer.embedding_model == "all-MiniLM-L6-v2" and len(answer.question_vector or []) == 384
    assert answer.id in shown  # the 👍/👎 buttons carry the answer id
    assert [(m.channel, m.answer_id) for m in await rows(env, AnswerMessage)] == [("C1", answer.id)]
    assert len(env.model.requests) == 1


async def test_the_thread_status_tells_the_answers_stages_and_is_cleared(env: SlackEnv) -> None:
    await env.event(mention(QUESTION, ts="1700000000.000002"))
    await env.event(mention("病假有幾天？", ts="1700000000.000003"))
    await wait_until(lambda: env.stats["answered"] == 2)
    by_thread: dict[str, list[dict[str, object]]] = {}
    for c in env.slack.named("assistant.threads.setStatus"):
        by_thread.setdefault(c.params["thread_ts"], []).append(c.params)
    # "Reading n sources": the passages the model was given, as the answer log has them.
    given = {a.thread: sum(bool(r["used"]) for r in a.retrieved) for a in await rows(env, Answer)}
    english, chinese = by_thread["1700000000.000002"], by_thread["1700000000.000003"]
    n = given["1700000000.000002"]
    assert [p["status"] for p in english] == [
        render.WORKING_STATUS,
        "Searching handbook…",
        f"Reading {n} sources…",
        "",  # cleared once the answer shows
    ]
    assert english[2]["loading_messages"] == [
        f"Reading {n} sources…",
        "Writing the answer…",
        "Checking it against the sources…",
    ]
    n = given["1700000000.000003"]
    assert [p["status"] for p in chinese][1:] == ["正在搜尋 handbook…", f"正在閱讀 {n} 份資料…", ""]
    # Cleared after the answer started to show, never before.
    calls = env.slack.calls
    cleared = [
        i for i, c in enumerate(calls) if c.method == "assistant.threads.setStatus" and not c.params["status"]
    ]
    started = [i for i, c in enumerate(calls) if c.method == "chat.startStream"]
    assert all(any(s < c for s in started) for c in cleared)


async def test_a_workspace_that_refuses_streaming_gets_chat_update_once_and_for_all(
    env: SlackEnv, caplog: pytest.LogCaptureFixture
) -> None:
    env.slack.refuse["chat.startStream"] = "method_deprecated"
    await env.event(mention(QUESTION, ts="1700000000.000004"))
    await wait_until(lambda: env.stats["answered"] == 1)
    [final] = env.shown()
    assert not final["native"] and final["thread_ts"] == "1700000000.000004"
    assert "Sick leave is 10 days per year" in final["text"] and render.FEEDBACK in blocks_text(final)
    # Learned once: the next answer in that workspace does not try again.
    await env.event(mention(QUESTION, ts="1700000000.000005"))
    await wait_until(lambda: env.stats["answered"] == 2)
    assert len(env.slack.named("chat.startStream")) == 1 and len(env.shown()) == 2
    said = f"Slack workspace {TEAM} refused native streaming (method_deprecated): using chat.update"
    assert [r.message.startswith(said) for r in caplog.records].count(True) == 1


async def test_without_a_thread_status_a_placeholder_says_what_kbot_does(env: SlackEnv) -> None:
    env.slack.refuse["assistant.threads.setStatus"] = "not_allowed"
    await env.event(mention(QUESTION, ts="1700000000.000006"))
    await wait_until(lambda: env.stats["answered"] == 1)
    [placeholder] = env.posted()
    assert placeholder["text"] == render.WORKING
    updates = [c.params["text"] for c in env.slack.named("chat.update")]
    assert updates[0] == "_Searching handbook…_" and updates[1].startswith("_Reading ")
    [final] = env.shown()  # the placeholder went once the streamed answer showed
    assert final["native"] and "Sick leave" in final["text"]
    assert [c.params["ts"] for c in env.slack.named("chat.delete")] == [placeholder["_ts"]]


async def test_retries_and_duplicate_deliveries_answer_once(env: SlackEnv) -> None:
    event = mention(QUESTION)
    first = await env.event(event, event_id="EvSAME")
    retry = await env.event(event, event_id="EvSAME", retry=1)
    again = await env.event(event, event_id="EvSAME", retry=2)
    # In a channel that answers every message, the same message also arrives as a message event
    # (here with the older <@U|name> mention form) with its own event id.
    both = mention(QUESTION, channel="CALL")
    as_mention = await env.event(both, event_id="EvM")
    legacy = both["text"].replace(f"<@{BOT_USER}>", f"<@{BOT_USER}|kbot>")
    as_message = await env.event(message(legacy, channel="CALL", ts=both["ts"]), event_id="EvOTHER")
    assert {first.status, retry.status, again.status, as_mention.status, as_message.status} == {200}
    await wait_until(lambda: env.stats["answered"] + env.stats["duplicate"] >= 4)
    await asyncio.sleep(0.3)
    await env.runtime.service.drain(10)
    assert env.stats["answered"] == 2  # one per message
    assert len(env.shown()) == 2 and len(env.model.requests) == 2
    answers = await rows(env, Answer)
    assert sorted(a.channel for a in answers) == ["C1", "CALL"]
    assert all(a.question == QUESTION for a in answers)


async def test_direct_message_is_answered_without_a_mention(env: SlackEnv) -> None:
    await env.event(message(QUESTION, channel="D1", channel_type="im"))
    await wait_until(lambda: env.stats["answered"] == 1)
    # A DM reply, not a thread: Slack streams only into threads, so it is posted, then updated.
    [placeholder] = env.posted()
    assert placeholder["channel"] == "D1" and "thread_ts" not in placeholder
    [answer] = await rows(env, Answer)
    assert answer.thread == "D1"  # the DM is one conversation
    # "Reply in thread" under kbot's DM answer continues the same conversation, in that thread,
    # streamed (no recipient needed in a DM).
    kbot_ts = placeholder["_ts"]
    await env.event(message("And a doctor's note?", channel="D1", channel_type="im", thread_ts=kbot_ts))
    await wait_until(lambda: env.stats["answered"] == 2)
    [start] = [c.params for c in env.slack.named("chat.startStream")]
    assert start["thread_ts"] == kbot_ts and "recipient_user_id" not in start
    assert {a.thread for a in await rows(env, Answer)} == {"D1"}
    assert "Sick leave is 10 days per year" in json.dumps(env.model.requests[-1][1]["messages"])


async def test_follow_up_in_a_thread_kbot_answered_needs_no_mention(env: SlackEnv) -> None:
    root = mention(QUESTION)
    await env.event(root)
    await wait_until(lambda: env.stats["answered"] == 1)
    await env.event(message("And from which day do I need a doctor's note?", thread_ts=root["ts"]))
    await wait_until(lambda: env.stats["answered"] == 2)
    answers = await rows(env, Answer)
    assert {a.thread for a in answers} == {root["ts"]}
    assert [p["thread_ts"] for p in env.shown()] == [root["ts"]] * 2
    # The follow-up was asked with the thread's history: the earlier question and answer.
    follow_up_prompt = json.dumps(env.model.requests[-1][1]["messages"])
    assert QUESTION in follow_up_prompt and "Sick leave is 10 days per year" in follow_up_prompt
    # Someone else chatting in the thread, or the asker talking to a colleague, is not a question.
    await env.event(message("thanks, that helps!", user="U8", thread_ts=root["ts"]))
    await env.event(message("<@U0BOB> can you check this?", thread_ts=root["ts"]))
    await wait_until(lambda: env.stats["ignored"] == 2)
    assert env.stats["answered"] == 2


async def test_messages_kbot_must_not_answer(env: SlackEnv) -> None:
    await env.event(message(QUESTION))  # top level, channel answers on mention only
    await env.event(message(QUESTION, thread_ts="1600000000.000001"))  # a thread kbot never answered in
    await env.event(mention(QUESTION, channel="COFF"))  # a channel where kbot is switched off
    await wait_until(lambda: env.stats["ignored"] == 3)
    await env.event(message("I answer myself", user=BOT_USER, bot_id=BOT_ID))  # kbot's own message
    await env.event(message(QUESTION, bot_id="B0OTHER", subtype="bot_message"))  # another bot
    await env.event(message(QUESTION, subtype="message_changed"))  # an edit
    await asyncio.sleep(0.5)
    await env.runtime.service.drain(10)
    assert env.stats["ignored"] == 3 and env.stats["answered"] == 0
    assert env.shown() == [] and env.model.requests == []


async def test_channel_that_answers_every_message(env: SlackEnv) -> None:
    await env.event(message(QUESTION, channel="CALL"))
    await wait_until(lambda: env.stats["answered"] == 1)
    assert env.shown()[0]["channel"] == "CALL"


async def test_rate_limit_gets_a_friendly_private_message(env: SlackEnv) -> None:
    for _ in range(6):  # the limit is 5 a minute
        await env.event(mention(QUESTION, user="U9"))
    await wait_until(lambda: env.stats["answered"] + env.stats["rate_limited"] == 6)
    assert env.stats["rate_limited"] == 1
    [ephemeral] = [c.params for c in env.slack.named("chat.postEphemeral")]
    assert ephemeral["user"] == "U9" and "wait a moment" in ephemeral["text"]


async def test_slack_rate_limit_on_the_web_api_is_retried(env: SlackEnv) -> None:
    env.slack.failures["chat.stopStream"] = [(429, {"Retry-After": "1"})]
    await env.event(mention(QUESTION))
    await wait_until(lambda: env.stats["answered"] == 1)
    [final] = env.shown()
    assert "Sick leave" in final["text"] and final["stopped"] and env.stats["failed"] == 0
    assert len(env.slack.named("chat.stopStream")) == 2  # refused once, then accepted


async def test_restricted_documents_only_where_everyone_who_reads_may_see_them(env: SlackEnv) -> None:
    """salary-bands.md is for group hr; Slack user group S0HR maps to hr. Channel CHR may show hr
    documents, C1 may not: an hr member's answer there is read by the whole channel."""
    question = "How much do engineers at level 2 earn per year?"
    await env.event(mention(question, user="UHR", channel="C1"))
    await wait_until(lambda: env.stats["answered"] == 1)
    assert env.slack.named("usergroups.users.list") == []  # C1 shows nothing restricted: no lookup
    await env.event(message(question, user="UHR", channel="D1", channel_type="im"))
    await env.event(mention(question, user="UHR", channel="CHR"))
    await env.event(mention(question, user="U1", channel="CHR"))  # in the channel, not in hr
    await wait_until(lambda: env.stats["answered"] == 4)
    assert env.slack.named("usergroups.users.list")[0].params["usergroup"] == "S0HR"
    answers = {(a.asker, a.channel): a for a in await rows(env, Answer)}
    salary = {
        k: any(r["source"].endswith("salary-bands.md") for r in a.retrieved) for k, a in answers.items()
    }
    assert salary == {("UHR", "C1"): False, ("UHR", "D1"): True, ("UHR", "CHR"): True, ("U1", "CHR"): False}
    for key in (("UHR", "C1"), ("U1", "CHR")):
        assert "70,000" not in json.dumps(answers[key].messages)  # never shown to the model
    # What reached the model decides what may be trained on (the export leaves restricted out).
    assert {k: a.restricted for k, a in answers.items()} == salary


async def test_not_found_in_a_channel_points_to_direct_messages(env: SlackEnv) -> None:
    question = "What is the airspeed velocity of an unladen swallow?"
    await env.event(mention(question, user="UHR", channel="C1", ts="1700000000.000061"))
    await env.event(message(question, user="UHR", channel="D1", channel_type="im"))
    await wait_until(lambda: env.stats["answered"] == 2)
    texts = {a.channel: a.answer for a in await rows(env, Answer)}
    assert "everyone here may see" in texts["C1"] and "direct message" in texts["C1"]
    assert "available to you" in texts["D1"] and "direct message" not in texts["D1"]
    [posted] = [m for m in env.shown() if m["channel"] == "C1"]
    assert "direct message" in posted["text"]


async def test_long_answer_is_split_into_messages_in_the_thread(tmp_path: Path, embedder: Embedder) -> None:
    long_answer = " ".join(f"Sentence {i} about sick leave being ten days [1]." for i in range(150))
    # Grounding off: this fake answer repeats itself, which the check would rightly replace.
    async with slack_env(tmp_path, embedder, answer=long_answer, grounding="off") as env:
        await env.event(mention(QUESTION, ts="1700000000.000042"))
        await wait_until(lambda: env.stats["answered"] == 1)
        shown = env.shown()
        assert len(shown) >= 1 and all(m["thread_ts"] == "1700000000.000042" for m in shown)
        assert all(m["native"] and m["stopped"] for m in shown)
        assert render.FEEDBACK in blocks_text(shown[-1])
        assert "Sentence 0 " in shown[0]["text"] and "Sentence 149 " in shown[-1]["text"]
        [answer] = await rows(env, Answer)
        assert {m.message_id for m in await rows(env, AnswerMessage)} == {m["ts"] for m in shown}
        assert answer.status == "ok"


async def test_answers_past_a_streamed_messages_limit_go_on_in_the_thread(
    tmp_path: Path, embedder: Embedder
) -> None:
    long_answer = " ".join(f"Sentence {i} about sick leave being ten days [1]." for i in range(400))
    async with slack_env(tmp_path, embedder, answer=long_answer, grounding="off", max_new_tokens=8000) as env:
        await env.event(mention(QUESTION, ts="1700000000.000043"))
        await wait_until(lambda: env.stats["answered"] == 1)
        shown = env.shown()
        assert len(shown) >= 2 and all(m["native"] and m["stopped"] for m in shown)
        assert all(len(m["text"]) <= 12_000 for m in shown)  # Slack's limit per streamed message
        assert render.FEEDBACK in blocks_text(shown[-1]) and not shown[0]["blocks"]
        assert "Sentence 0 " in shown[0]["text"] and "Sentence 399 " in shown[-1]["text"]


async def test_model_failure_posts_an_error_in_the_thread(tmp_path: Path, embedder: Embedder) -> None:
    async with slack_env(tmp_path, embedder, model_url="http://127.0.0.1:9/v1") as env:
        await env.event(mention(QUESTION, ts="1700000000.000009"))
        await wait_until(lambda: env.stats["answered"] + env.stats["failed"] == 1)
        [final] = env.shown()
        assert final["text"].startswith("Sorry, I could not answer this right now")
        assert render.FEEDBACK not in blocks_text(final)  # no feedback buttons on an error
        [answer] = await rows(env, Answer)
        assert answer.status == "error"


async def test_database_failure_posts_an_error(env: SlackEnv) -> None:
    from bot.ledger import ChatLedger
    from kbot.db import Database

    broken = Database("postgresql+psycopg://nobody@127.0.0.1:1/none")
    env.runtime.service.ledger = ChatLedger(broken)
    await env.event(mention(QUESTION, ts="1700000000.000011"))
    await wait_until(lambda: env.stats["failed"] == 1)
    await broken.close()
    [notice] = env.shown()
    assert notice["text"].startswith("Sorry, something went wrong on my side")
    assert "my database is not available" in notice["text"]
    assert "127.0.0.1" not in notice["text"] and "postgresql" not in notice["text"]  # details stay in the log
    assert notice["thread_ts"] == "1700000000.000011"


# --- feedback ---


async def answered(env: SlackEnv, user: str = "U1") -> tuple[str, str]:
    """Ask once; the answer id and the ts of the message that shows it."""
    done = env.stats["answered"] + 1
    await env.event(mention(QUESTION, user=user))
    await wait_until(lambda: env.stats["answered"] == done)
    answer = (await rows(env, Answer))[-1]
    return answer.id, env.shown()[-1]["ts"]


def reaction(
    kind: str, name: str, ts: str, *, user: str = "U2", item_user: str = BOT_USER
) -> dict[str, object]:
    return {
        "type": kind,
        "user": user,
        "reaction": name,
        "item_user": item_user,
        "item": {"type": "message", "channel": "C1", "ts": ts},
        "event_ts": "1700000100.000001",
    }


def click(
    action_id: str, answer_id: str, ts: str, *, user: str = "U3", legacy: bool = False
) -> dict[str, object]:
    """A click under the answer ``ts``. 👍/👎 (``render.VOTE_UP``/``VOTE_DOWN``) as Slack sends a
    ``feedback_buttons`` click (the value kbot rendered); ``legacy``: the classic buttons of
    messages posted before them."""
    action: dict[str, str] = {"action_id": action_id, "value": answer_id, "type": "button"}
    if action_id in (render.VOTE_UP, render.VOTE_DOWN) and not legacy:
        sign = render.UP if action_id == render.VOTE_UP else render.DOWN
        action = {"action_id": render.FEEDBACK, "value": f"{sign}{answer_id}", "type": "feedback_buttons"}
    return {
        "type": "block_actions",
        "user": {"id": user},
        "trigger_id": "13345224609.738474920.8088930838d88f008e0",
        "container": {"type": "message", "message_ts": ts, "channel_id": "C1"},
        "channel": {"id": "C1"},
        "message": {"ts": ts, "thread_ts": "1699999000.000001"},
        "actions": [action],
    }


async def live_votes(env: SlackEnv) -> set[tuple[str, str, int, str]]:
    return {(v.answer_id, v.voter, v.value, v.origin) for v in await rows(env, Vote)}


async def test_reactions_and_buttons_leave_exactly_the_live_votes(env: SlackEnv) -> None:
    answer_id, ts = await answered(env)
    other_id, other_ts = await answered(env)
    expected = 0

    async def send(event: dict[str, object], **kwargs: object) -> None:
        nonlocal expected
        expected += 1
        assert (await env.event(event, **kwargs)).status == 200  # type: ignore[arg-type]
        await wait_until(lambda: env.stats["feedback_recorded"] + env.stats["feedback_ignored"] == expected)

    def react(kind: str, name: str, on: str, user: str = "U2", **kwargs: object) -> dict[str, object]:
        """Change the message's reactions as Slack would, then return the event Slack sends."""
        users = env.slack.reactions.setdefault(("C1", on), {}).setdefault(name, [])
        if kind == "reaction_added":
            users.append(user)
        else:
            users.remove(user)
        return reaction(kind, name, on, user=user, **kwargs)  # type: ignore[arg-type]

    await send(react("reaction_added", "+1", ts))
    assert await live_votes(env) == {(answer_id, "U2", 1, "reaction")}
    await send(react("reaction_added", "-1::skin-tone-3", ts))  # changing replaces
    assert await live_votes(env) == {(answer_id, "U2", -1, "reaction")}
    await send(react("reaction_removed", "+1", ts))  # taking back the 👍 leaves the 👎
    assert await live_votes(env) == {(answer_id, "U2", -1, "reaction")}
    await send(react("reaction_added", "thumbsup::skin-tone-6", ts, user="U4"))
    await send(react("reaction_added", "thumbsdown", other_ts, user="U4"))
    await send(react("reaction_removed", "-1::skin-tone-3", ts))  # removing deletes
    assert await live_votes(env) == {(answer_id, "U4", 1, "reaction"), (other_id, "U4", -1, "reaction")}

    # A retried reaction event is not applied twice.
    await send(react("reaction_added", "+1", ts, user="U5"), event_id="EvR1")
    await send(react("reaction_removed", "+1", ts, user="U5"), event_id="EvR2")
    await send(reaction("reaction_added", "+1", ts, user="U5"), event_id="EvR1", retry=1)
    assert not any(voter == "U5" for _, voter, _, _ in await live_votes(env))
    # Events delivered out of order (the removal first) still leave what the message shows: nothing.
    added = react("reaction_added", "+1", ts, user="U7")
    removed = react("reaction_removed", "+1", ts, user="U7")
    await send(removed)
    await send(added)
    assert not any(voter == "U7" for _, voter, _, _ in await live_votes(env))

    # Reactions kbot ignores: not a vote emoji, another person's message, a message without an answer.
    await env.event(reaction("reaction_added", "tada", ts, user="U6"))
    await env.event(reaction("reaction_added", "+1", ts, user="U6", item_user="U1"))
    await send(react("reaction_added", "+1", "1234.5678", user="U6"))

    # Buttons: a 👎 click by U4 replaces their 👍 reaction; U3 votes 👍.
    assert (await env.interact(click(render.VOTE_DOWN, answer_id, ts, user="U4"))).status == 200
    assert (await env.interact(click(render.VOTE_UP, answer_id, ts))).status == 200
    await wait_until(lambda: env.stats["feedback_recorded"] + env.stats["feedback_ignored"] == expected + 2)
    assert await live_votes(env) == {
        (answer_id, "U4", -1, "button"),
        (answer_id, "U3", 1, "button"),
        (other_id, "U4", -1, "reaction"),
    }
    thanks = [c.params["text"] for c in env.slack.named("chat.postEphemeral")]
    assert any("👍" in t for t in thanks)
    # The 👎 click is acknowledged by the "What was wrong?" dialog instead (tests/test_slack_feedback.py).
    assert [c.params["view"]["title"]["text"] for c in env.slack.named("views.open")] == ["What was wrong?"]


async def test_forged_button_value_is_ignored(env: SlackEnv) -> None:
    _answer_id, ts = await answered(env)
    assert (await env.interact(click(render.VOTE_UP, "not-an-answer", ts))).status == 200
    await wait_until(lambda: env.stats["feedback_ignored"] == 1)
    assert await rows(env, Vote) == []
    assert env.slack.named("chat.postEphemeral") == []  # no thanks for a vote that was not counted


async def test_a_question_asked_while_the_threads_answer_streams_waits_its_turn(env: SlackEnv) -> None:
    env.model.gate = asyncio.Event()
    await env.event(mention(QUESTION, ts="1700000000.000300"))
    await wait_until(lambda: len(env.model.requests) == 1)  # the first answer is being written
    await env.event(mention("And parental leave?", ts="1700000000.000301", thread_ts="1700000000.000300"))
    await wait_until(lambda: len(env.runtime.service._tasks) == 2)
    env.model.gate.set()
    await wait_until(lambda: env.stats["answered"] == 2)
    calls = env.slack.calls
    first_final = next(
        i for i, c in enumerate(calls) if c.method == "chat.stopStream" and render.FEEDBACK in str(c.params)
    )
    statuses = [
        i for i, c in enumerate(calls) if c.method == "assistant.threads.setStatus" and c.params["status"]
    ]
    starts = [i for i, c in enumerate(calls) if c.method == "chat.startStream"]
    assert len(starts) == 2 and starts[1] > first_final and statuses[-1] > first_final  # not interleaved
    second = env.model.requests[1][1]["messages"]
    assert any(m["role"] == "assistant" and "Sick leave" in m["content"] for m in second)  # it saw the first


async def test_feedback_buttons_are_slacks_ai_controls_and_the_last_click_wins(env: SlackEnv) -> None:
    answer_id, ts = await answered(env)
    blocks = env.shown()[-1]["blocks"]  # chat.stopStream's
    [controls] = [b for b in blocks if b["type"] == "context_actions"]
    [buttons] = controls["elements"]
    assert buttons["type"] == "feedback_buttons" and buttons["action_id"] == render.FEEDBACK
    assert buttons["positive_button"]["value"] == f"up:{answer_id}"
    assert buttons["negative_button"]["value"] == f"down:{answer_id}"
    assert buttons["positive_button"]["text"] == {"type": "plain_text", "text": "👍"}
    [suggest] = [e for b in blocks if b["type"] == "actions" for e in b["elements"]]
    assert (suggest["action_id"], suggest["value"]) == (render.SUGGEST, answer_id)
    # A toggle with no "deselected": every click is a vote, the person's last one wins.
    for action in (render.VOTE_UP, render.VOTE_DOWN, render.VOTE_UP):
        assert (await env.interact(click(action, answer_id, ts, user="U5"))).status == 200
    # The classic buttons of a message posted before still count; a value kbot never rendered does not.
    assert (await env.interact(click(render.VOTE_DOWN, answer_id, ts, user="U6", legacy=True))).status == 200
    odd = click(render.VOTE_UP, answer_id, ts, user="U7")
    odd["actions"] = [
        {"action_id": render.FEEDBACK, "value": f"sideways:{answer_id}", "type": "feedback_buttons"}
    ]
    assert (await env.interact(odd)).status == 200
    await wait_until(lambda: env.stats["feedback_recorded"] == 4)
    assert await live_votes(env) == {(answer_id, "U5", 1, "button"), (answer_id, "U6", -1, "button")}


async def test_suggest_a_better_answer_stores_a_correction(env: SlackEnv) -> None:
    answer_id, ts = await answered(env)
    assert (await env.interact(click(render.SUGGEST, answer_id, ts))).status == 200
    await wait_until(lambda: bool(env.slack.named("views.open")))
    opened = env.slack.named("views.open")[0].params
    assert opened["trigger_id"] == "13345224609.738474920.8088930838d88f008e0"
    view = opened["view"]
    assert view["callback_id"] == render.CORRECTION_VIEW

    def submission(text: str) -> dict[str, object]:
        state = {
            "values": {
                render.CORRECTION_BLOCK: {
                    render.CORRECTION_INPUT: {"type": "plain_text_input", "value": text}
                }
            }
        }
        return {
            "type": "view_submission",
            "user": {"id": "U3"},
            "trigger_id": "1.2.3",
            "view": {**view, "id": "V1", "state": state},
        }

    empty = await env.interact(submission("   "))
    assert empty.status == 200 and (await empty.json())["response_action"] == "errors"
    better = "Sick leave: up to 10 paid days a year; a doctor's note from the third day [1]."
    saved = await env.interact(submission(better))
    assert saved.status == 200 and await saved.text() == ""  # the modal closes
    await wait_until(lambda: any("saved" in c.params["text"] for c in env.slack.named("chat.postEphemeral")))
    [correction] = await rows(env, Correction)
    assert (correction.answer_id, correction.author, correction.text) == (answer_id, "U3", better)
    await wait_until(lambda: any("saved" in c.params["text"] for c in env.slack.named("chat.postEphemeral")))


# --- the server without Slack, and Socket Mode ---


async def test_server_starts_without_slack_settings(tmp_path: Path, embedder: Embedder) -> None:
    async with slack_env(tmp_path, embedder, slack_signing_secret=None, slack_bot_token=None) as env:
        assert await (await env.client.get("/healthz")).json() == {
            "status": "ok",
            "slack": False,
            "teams": "off",
        }
        assert (await env.event(mention(QUESTION))).status == 404
        assert (await env.client.post("/api/messages", json={"type": "message"})).status == 404


async def test_socket_mode_answers_and_acks_envelopes(tmp_path: Path, embedder: Embedder) -> None:
    from slack_bolt.adapter.socket_mode.aiohttp import AsyncSocketModeHandler

    async with slack_env(tmp_path, embedder, slack_app_token="xapp-1-test") as env:
        assert env.runtime.slack is not None
        handler = AsyncSocketModeHandler(env.runtime.slack.app, "xapp-1-test", ping_interval=30)
        await handler.connect_async()  # type: ignore[no-untyped-call]
        try:
            await wait_until(lambda: env.slack.connected)
            event = json.loads(event_body(mention(QUESTION, ts="1700000000.000077"), "EvSOCK"))
            envelope_id = await env.slack.push(event)
            await wait_until(lambda: env.stats["answered"] == 1)
            assert {"envelope_id": envelope_id} in [
                {"envelope_id": a.get("envelope_id")} for a in env.slack.socket_acks
            ]
            assert env.shown()[0]["thread_ts"] == "1700000000.000077"
            assert env.slack.named("apps.connections.open")[0].params["_token"] == "Bearer xapp-1-test"
        finally:
            await handler.close_async()


# --- failures in the middle of an answer ---


@pytest.mark.parametrize("path", ["native", "chat.update"])
async def test_streaming_update_failures_do_not_cost_the_answer(
    tmp_path: Path, embedder: Embedder, path: str
) -> None:
    # The first streaming update is refused even after the client's retries; the final text still goes out.
    # (Streaming updates exist with grounding off; a checked answer is shown whole.)
    async with slack_env(tmp_path, embedder, grounding="off", slack_streaming=path == "native") as env:
        method = "chat.appendStream" if path == "native" else "chat.update"
        env.slack.failures[method] = [(429, {"Retry-After": "0"})] * 4
        await env.event(mention(QUESTION))
        await wait_until(lambda: env.stats["answered"] + env.stats["failed"] == 1)
        assert env.stats["answered"] == 1 and not env.slack.failures[method]
        [final] = env.shown()
        assert final["native"] == (path == "native")
        assert final["text"].startswith("Sick leave is 10 days per year") and "Sources" in blocks_text(final)
        assert final["text"].count("Sick leave") == 1  # nothing streamed twice


async def test_answer_stays_when_recording_its_messages_fails(env: SlackEnv) -> None:
    from kbot.errors import StoreError

    async def broken(*_args: object, **_kwargs: object) -> None:
        raise StoreError("The SQL store at sqlite:///x failed: disk I/O error")

    env.runtime.service.ledger.record_messages = broken  # type: ignore[method-assign]
    await env.event(mention(QUESTION))
    await wait_until(lambda: env.stats["answered"] + env.stats["failed"] == 1)
    assert env.stats["answered"] == 1
    [final] = env.shown()
    assert final["text"].startswith("Sick leave is 10 days per year")  # not replaced by an apology


async def test_shutdown_past_the_drain_deadline_tells_the_asker(tmp_path: Path, embedder: Embedder) -> None:
    async with slack_env(tmp_path, embedder) as env:
        env.model.delay_s = 5  # the model is still thinking when the server stops
        await env.event(mention(QUESTION, ts="1700000000.000055"))
        await wait_until(lambda: bool(env.slack.named("assistant.threads.setStatus")))  # the status is up
        await env.runtime.service.drain(0.1)
        assert env.stats["answered"] == 0
        [final] = env.shown()
        assert "restarted before I could finish" in final["text"]
        assert env.slack.named("assistant.threads.setStatus")[-1].params["status"] == ""  # not left stale
