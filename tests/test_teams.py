"""Teams end to end: real Activity JSON posted to /api/messages, botbuilder's CloudAdapter checking
real JWTs (signed with a local key published through local OpenID metadata), replies recorded by
a fake Bot Framework connector at the activity's serviceUrl."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from kbot.db.models import Answer, AnswerMessage, Correction, Vote
from knowledge.embeddings import Embedder
from tests.fake_slack import wait_until
from tests.fake_teams import (
    APP_ID,
    APP_PASSWORD,
    OUTGOING_TOKEN,
    TENANT,
    FakeConnector,
    LocalCredentialFactory,
    SigningKeys,
    activity,
    channel_mention,
    fake_connector,
    openid_server,
    stream_info,
)
from tests.slack_env import SlackEnv, slack_env

QUESTION = "How many days of sick leave do I get?"


@dataclass
class TeamsEnv:
    env: SlackEnv
    connector: FakeConnector
    keys: SigningKeys

    @property
    def stats(self) -> Any:
        return self.env.runtime.service.stats

    async def post(self, body: dict[str, Any] | str, *, token: str | None = "valid") -> Any:
        headers = {"Content-Type": "application/json"}
        if token == "valid":
            headers["Authorization"] = f"Bearer {self.keys.token(self.connector.url)}"
        elif token:
            headers["Authorization"] = f"Bearer {token}"
        data = body if isinstance(body, str) else json.dumps(body)
        return await self.env.client.post("/api/messages", data=data, headers=headers)

    def activity(self, **fields: Any) -> dict[str, Any]:
        return activity(self.connector.url, **fields)

    async def rows(self, model: type) -> list[Any]:
        async with self.env.runtime.service.ledger._db.session() as s:
            return list((await s.scalars(select(model))).all())


@asynccontextmanager
async def teams_env(
    tmp_path: Path, embedder: Embedder, *, password: str = APP_PASSWORD, **overrides: Any
) -> AsyncIterator[TeamsEnv]:
    """kbot serve with Teams credentials configured, checking tokens against local keys."""
    from botframework.connector.auth import ChannelValidation

    keys = SigningKeys()
    previous = ChannelValidation.open_id_metadata_endpoint
    with openid_server(keys):
        # Production's code path (public cloud channel validation), with the keys published locally.
        ChannelValidation.open_id_metadata_endpoint = keys.metadata_url
        try:
            async with (
                fake_connector() as connector,
                slack_env(
                    tmp_path,
                    embedder,
                    teams_app_id=APP_ID,
                    teams_app_password=password,
                    teams_credentials=LocalCredentialFactory(APP_ID, password),
                    **overrides,
                ) as env,
            ):
                yield TeamsEnv(env, connector, keys)
        finally:
            ChannelValidation.open_id_metadata_endpoint = previous


@pytest.fixture
async def teams(tmp_path: Path, embedder: Embedder) -> AsyncIterator[TeamsEnv]:
    async with teams_env(tmp_path, embedder) as env:
        yield env


async def test_requests_without_a_valid_token_are_rejected(teams: TeamsEnv) -> None:
    message = teams.activity(text=QUESTION)
    assert (await teams.post(message, token=None)).status == 401
    assert (await teams.post(message, token="not-a-jwt")).status == 401
    forged = SigningKeys(kid=teams.keys.kid)  # same key id, another private key
    assert (await teams.post(message, token=forged.token(teams.connector.url))).status == 401
    wrong_audience = teams.keys.token(teams.connector.url, audience="someone-elses-bot")
    assert (await teams.post(message, token=wrong_audience)).status == 401
    expired = teams.keys.token(teams.connector.url, lifetime_s=-3600)
    assert (await teams.post(message, token=expired)).status == 401
    other_service = teams.keys.token("https://smba.example.net/evil/")
    assert (await teams.post(message, token=other_service)).status == 401
    await asyncio.sleep(0.3)
    assert teams.connector.sent == [] and not teams.stats
    assert await teams.rows(Answer) == []


async def test_direct_message_is_answered_with_citations_and_the_feedback_loop(teams: TeamsEnv) -> None:
    response = await teams.post(teams.activity(text=QUESTION))
    assert response.status in (200, 201)
    await wait_until(lambda: teams.stats["answered"] == 1)
    # Streamed, as Teams streams in personal chats: what kbot is doing (informative updates,
    # numbered from 1, the first one's id naming the stream), then the final message.
    updates = [s.activity for s in teams.connector.sent if s.activity["type"] == "typing"]
    first, *rest = [stream_info(u) for u in updates]
    assert first == {"type": "streaminfo", "streamType": "informative", "streamSequence": 1}
    assert updates[0]["text"] == "Searching handbook…"
    stream_id = teams.connector.sent[0].response_id
    assert [(i["streamType"], i["streamId"], i["streamSequence"]) for i in rest] == [
        ("informative", stream_id, n) for n in range(2, len(rest) + 2)
    ]
    assert not teams.connector.violations
    [answer] = teams.connector.messages()
    assert answer["text"].startswith("Sick leave is 10 days per year [1]")
    assert answer["channelData"] == {"feedbackLoop": {"type": "custom"}}  # never with the legacy flag
    entity, final = answer["entities"]
    assert final == {"type": "streaminfo", "streamType": "final", "streamId": stream_id}
    assert entity["additionalType"] == ["AIGeneratedContent"]
    [claim] = entity["citation"]
    assert claim["position"] == 1 and claim["appearance"]["name"] == "Leave policy"
    assert claim["appearance"]["url"].endswith("leave-policy.md")
    assert "10 days of paid sick leave" in claim["appearance"]["abstract"]
    assert all(s.authorization == f"Bearer {OUTGOING_TOKEN}" for s in teams.connector.sent)
    assert all("/v3/conversations/a:1alice-personal/activities" in s.path for s in teams.connector.sent)
    [row] = await teams.rows(Answer)
    assert (row.platform, row.asker, row.thread) == ("teams", "aad-alice", "a:1alice-personal")


def streamed(connector: FakeConnector) -> list[tuple[str, int, str]]:
    """(streamType, streamSequence, text) of each stream update sent, in order."""
    return [
        (info["streamType"], info["streamSequence"], s.activity["text"])
        for s in connector.sent
        if s.activity["type"] == "typing" and (info := stream_info(s.activity))
    ]


async def test_a_teams_dm_streams_the_answer_as_it_is_written(
    tmp_path: Path, embedder: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bot.teams import stream

    monkeypatch.setattr(stream, "UPDATE_EVERY_S", 0.05)
    # Grounding off shows the model's text as it comes (strict shows only checked text, at once).
    async with teams_env(tmp_path, embedder, grounding="off") as teams:
        teams.env.model.token_delay_s = 0.06
        await teams.post(teams.activity(text=QUESTION))
        await wait_until(lambda: teams.stats["answered"] == 1)
        updates = streamed(teams.connector)
        kinds = [k for k, _, _ in updates]
        assert kinds[0] == "informative" and "streaming" in kinds
        assert kinds == sorted(kinds)  # every informative update before the text
        assert [n for _, n, _ in updates] == list(range(1, len(updates) + 1))
        texts = [t for k, _, t in updates if k == "streaming"]
        [answer] = teams.connector.messages()
        assert all(answer["text"].startswith(t.strip()) for t in texts)  # cumulative, never taken back
        assert len(set(texts)) == len(texts) >= 2
        assert stream_info(answer) == {
            "type": "streaminfo",
            "streamType": "final",
            "streamId": teams.connector.sent[0].response_id,
        }
        assert not teams.connector.violations


async def test_a_group_chat_gets_one_message_and_no_stream(teams: TeamsEnv) -> None:
    group = {"conversationType": "groupChat", "isGroup": True, "tenantId": TENANT, "id": "19:lunch@thread.v2"}
    await teams.post({**channel_mention(teams.connector.url, QUESTION), "conversation": group})
    await wait_until(lambda: teams.stats["answered"] == 1)
    [answer] = teams.connector.messages()
    assert answer["text"].startswith("Sick leave is 10 days per year")
    assert all(stream_info(s.activity) is None for s in teams.connector.sent)
    assert {s.activity["type"] for s in teams.connector.sent} == {"typing", "message"}


@pytest.mark.parametrize(("status", "start"), [(403, 1), (429, 2)])
async def test_a_refused_stream_falls_back_to_one_message(
    tmp_path: Path, embedder: Embedder, monkeypatch: pytest.MonkeyPatch, status: int, start: int
) -> None:
    from bot.teams import stream

    monkeypatch.setattr(stream, "UPDATE_EVERY_S", 0.05)
    async with teams_env(tmp_path, embedder, grounding="off") as teams:
        teams.env.model.token_delay_s = 0.06
        teams.connector.refuse_streams = (status, start)  # 403 ContentStreamNotAllowed; 429 later on
        await teams.post(teams.activity(text=QUESTION))
        await wait_until(lambda: teams.stats["answered"] + teams.stats["failed"] == 1)
        assert teams.stats["answered"] == 1
        [answer] = teams.connector.messages()
        assert answer["text"].startswith("Sick leave is 10 days per year")
        assert stream_info(answer) is None  # one plain message: no stream to end
        assert len(streamed(teams.connector)) == start - 1  # nothing tried after the refusal
        assert not teams.connector.violations


async def test_a_stream_ends_within_teams_time_limit_and_the_answer_follows(
    tmp_path: Path, embedder: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bot.teams import stream

    monkeypatch.setattr(stream, "STREAM_LIMIT_S", 0.3)  # Teams' is 2 minutes
    async with teams_env(tmp_path, embedder) as teams:
        teams.env.model.delay_s = 1.0
        await teams.post(teams.activity(text=QUESTION))
        await wait_until(lambda: teams.stats["answered"] == 1)
        ending, answer = teams.connector.messages()
        assert ending["text"] == stream.TOO_LONG and stream_info(ending)["streamType"] == "final"  # type: ignore[index]
        assert answer["text"].startswith("Sick leave is 10 days per year") and stream_info(answer) is None
        assert not teams.connector.violations


async def test_channel_mention_is_answered_in_its_thread(teams: TeamsEnv) -> None:
    mention = channel_mention(teams.connector.url, QUESTION, root="1700000000100")
    assert (await teams.post(mention)).status in (200, 201)
    await wait_until(lambda: teams.stats["answered"] == 1)
    [answer] = teams.connector.messages()
    assert answer["conversation"]["id"] == "19:hr-help@thread.tacv2;messageid=1700000000100"
    [row] = await teams.rows(Answer)
    assert row.question == QUESTION  # "<at>kbot</at>" stripped
    assert row.channel == "19:hr-help@thread.tacv2"
    # Without a mention, someone else's chatter in the thread, or a new post, is not a question.
    bob = {"id": "29:1bob", "name": "Bob", "aadObjectId": "aad-bob"}
    chatter = channel_mention(teams.connector.url, "thanks all", root="1700000000100")
    chatter["text"], chatter["entities"], chatter["from"] = "thanks all", [], bob
    await teams.post(chatter)
    top = channel_mention(teams.connector.url, "lunch?", root="1700000000999")
    top["text"], top["entities"], top["id"] = "lunch?", [], "1700000000999"
    await teams.post(top)
    # Alice, who asked, talking to a colleague in the thread: not to kbot either.
    aside = channel_mention(teams.connector.url, "<at>Bob</at> see above", root="1700000000100")
    aside["entities"] = [
        {"type": "mention", "text": "<at>Bob</at>", "mentioned": {"id": "29:1bob", "name": "Bob"}}
    ]
    await teams.post(aside)
    await wait_until(lambda: teams.stats["ignored"] == 3)
    # Her follow-up needs no new mention, as in Slack threads; it is asked with the thread's history.
    follow_up = channel_mention(teams.connector.url, "And a doctor's note?", root="1700000000100")
    follow_up["text"], follow_up["entities"] = "And a doctor's note?", []
    await teams.post(follow_up)
    await wait_until(lambda: teams.stats["answered"] == 2)
    assert teams.stats["ignored"] == 3
    assert [r.thread for r in await teams.rows(Answer)] == [answer["conversation"]["id"]] * 2
    assert QUESTION in json.dumps(teams.env.model.requests[-1][1]["messages"])


async def _answered(teams: TeamsEnv) -> tuple[str, str]:
    done = teams.stats["answered"] + 1
    await teams.post(teams.activity(text=QUESTION))
    await wait_until(lambda: teams.stats["answered"] == done)
    answer_id = (await teams.rows(Answer))[-1].id
    message_id = next(m.message_id for m in await teams.rows(AnswerMessage) if m.answer_id == answer_id)
    return answer_id, message_id


def _feedback(teams: TeamsEnv, reply_to: str, reaction: str, text: str | None, user: str) -> dict[str, Any]:
    action: dict[str, Any] = {"reaction": reaction}
    if text is not None:
        action["feedback"] = json.dumps({"feedbackText": text})
    return teams.activity(
        type="invoke",
        name="message/submitAction",
        replyToId=reply_to,
        value={"actionName": "feedback", "actionValue": action},
        **{"from": {"id": f"29:{user}", "name": user, "aadObjectId": user}},
    )


async def test_feedback_buttons_and_reactions_land_in_the_vote_log(teams: TeamsEnv) -> None:
    answer_id, message_id = await _answered(teams)

    liked = await teams.post(_feedback(teams, message_id, "like", None, "aad-bob"))
    assert liked.status == 200
    disliked = await teams.post(
        _feedback(teams, message_id, "dislike", "The policy changed in 2026.", "aad-carol")
    )
    assert disliked.status == 200
    votes = {(v.voter, v.value, v.origin, v.comment) for v in await teams.rows(Vote)}
    assert votes == {
        ("aad-bob", 1, "feedback", ""),
        ("aad-carol", -1, "feedback", "The policy changed in 2026."),
    }

    def reaction(kind: str, name: str, user: str) -> dict[str, Any]:
        return teams.activity(
            type="messageReaction",
            replyToId=message_id,
            **{kind: [{"type": name}], "from": {"id": f"29:{user}", "name": user, "aadObjectId": user}},
        )

    for body in (
        reaction("reactionsAdded", "like", "aad-dave"),
        reaction("reactionsAdded", "angry", "aad-bob"),  # Bob changes his mind: replaces his 👍
        reaction("reactionsAdded", "laugh", "aad-erin"),  # not a vote
        reaction("reactionsAdded", "heart", "aad-erin"),
        reaction("reactionsRemoved", "heart", "aad-erin"),  # removing deletes
    ):
        assert (await teams.post(body)).status in (200, 201)
    await wait_until(lambda: teams.stats["feedback_recorded"] == 6)
    live = {(v.answer_id, v.voter, v.value) for v in await teams.rows(Vote)}
    assert live == {(answer_id, "aad-bob", -1), (answer_id, "aad-carol", -1), (answer_id, "aad-dave", 1)}


async def test_feedback_text_is_kept_as_the_votes_comment(teams: TeamsEnv) -> None:
    """What people type in Teams' feedback form is the vote's comment, as typed (lone surrogates made
    U+FFFD, outer space trimmed), for 👎 and 👍 alike; the review queue reads it from there."""
    answer_id, message_id = await _answered(teams)
    typed = "  Outdated: it's 12 days since 2026.\nSee HR-42 ✓ \ud800 <b>x</b> "
    kept = "Outdated: it's 12 days since 2026.\nSee HR-42 ✓ \ufffd <b>x</b>"
    for body in (
        _feedback(teams, message_id, "dislike", typed, "aad-carol"),
        _feedback(teams, message_id, "like", "Clear and right.", "aad-bob"),
    ):
        assert (await teams.post(body)).status == 200
    assert {(v.answer_id, v.voter, v.value, v.comment) for v in await teams.rows(Vote)} == {
        (answer_id, "aad-carol", -1, kept),
        (answer_id, "aad-bob", 1, "Clear and right."),
    }
    # A form without text (null, or not the JSON Teams sends) leaves no stray words behind.
    null = _feedback(teams, message_id, "dislike", None, "aad-bob")
    null["value"]["actionValue"]["feedback"] = json.dumps({"feedbackText": None})
    assert (await teams.post(null)).status == 200
    plain = _feedback(teams, message_id, "dislike", None, "aad-dave")
    plain["value"]["actionValue"]["feedback"] = "just words"
    assert (await teams.post(plain)).status == 200
    comments = {v.voter: (v.value, v.comment) for v in await teams.rows(Vote)}
    assert comments["aad-bob"] == (-1, "") and comments["aad-dave"] == (-1, "just words")


def _click(teams: TeamsEnv, reply_to: str, reaction: str, user: str) -> dict[str, Any]:
    """A click on Teams' 👍/👎 under a message with the custom feedback loop."""
    return teams.activity(
        type="invoke",
        name="message/fetchTask",
        replyToId=reply_to,
        value={"data": {"actionName": "feedback", "actionValue": {"reaction": reaction}}},
        **{"from": {"id": f"29:{user}", "name": user, "aadObjectId": user}},
    )


async def test_a_click_is_a_vote_and_opens_kbots_dialog_whose_answers_reach_the_review_queue(
    teams: TeamsEnv,
) -> None:
    answer_id, message_id = await _answered(teams)
    clicked = await teams.post(_click(teams, message_id, "dislike", "aad-carol"))
    assert clicked.status == 200
    # Recorded before the dialog is filled in: closing it loses nothing.
    assert {(v.voter, v.value, v.comment) for v in await teams.rows(Vote)} == {("aad-carol", -1, "")}
    task = (await clicked.json())["task"]
    assert task["type"] == "continue" and task["value"]["title"] == "What was wrong?"
    card = task["value"]["card"]
    assert card["contentType"] == "application/vnd.microsoft.card.adaptive"
    inputs = {b["id"]: b for b in card["content"]["body"] if b["type"].startswith("Input.")}
    assert set(inputs) == {"reasons", "feedbackText", "better"}
    assert inputs["reasons"]["isMultiSelect"] is True
    assert [c["value"] for c in inputs["reasons"]["choices"]][:2] == ["wrong_facts", "off_topic"]
    assert card["content"]["actions"] == [{"type": "Action.Submit", "title": "Send"}]
    # 👍 asks only what was good.
    liked = await teams.post(_click(teams, message_id, "like", "aad-bob"))
    good = (await liked.json())["task"]["value"]["card"]["content"]["body"]
    assert [b["id"] for b in good if b["type"].startswith("Input.")] == ["feedbackText"]

    # Submitted: Teams sends the card's inputs as a JSON string.
    form = {
        "reasons": "missing_info,wrong_facts,forged",
        "feedbackText": " it changed ",
        "better": "12 days.",
    }
    submitted = _feedback(teams, message_id, "dislike", None, "aad-carol")
    submitted["value"]["actionValue"]["feedback"] = json.dumps(form)
    assert (await teams.post(submitted)).status == 200
    votes = {(v.voter, v.value, v.comment) for v in await teams.rows(Vote)}
    assert votes == {
        (
            "aad-carol",
            -1,
            "Wrong or outdated facts; Missing information; it changed",
        ),  # kbot's own values only
        ("aad-bob", 1, ""),
    }
    [correction] = await teams.rows(Correction)
    assert (correction.answer_id, correction.author, correction.text) == (answer_id, "aad-carol", "12 days.")
    assert correction.status == "pending"  # KBOT_CORRECTIONS=review: it waits in the queue


async def test_feedback_on_something_that_is_not_an_answer(teams: TeamsEnv) -> None:
    unknown = await teams.post(_feedback(teams, "1234", "like", None, "aad-bob"))
    assert unknown.status == 404
    malformed = teams.activity(type="invoke", name="message/submitAction", replyToId="1234", value={"x": 1})
    assert (await teams.post(malformed)).status == 400
    assert (await teams.post(_click(teams, "1234", "dislike", "aad-bob"))).status == 404
    odd = _click(teams, "1234", "meh", "aad-bob")
    assert (await teams.post(odd)).status == 400
    assert await teams.rows(Vote) == []


async def test_malformed_activities_are_400_and_store_nothing(teams: TeamsEnv) -> None:
    for body in ("{not json", "[1, 2]", json.dumps({"text": "no type"}), json.dumps({"type": ""})):
        response = await teams.post(body)
        assert response.status == 400, body
    assert await teams.rows(Answer) == [] and teams.connector.sent == []


async def test_model_failure_becomes_a_message_in_the_chat(tmp_path: Path, embedder: Embedder) -> None:
    async with teams_env(tmp_path, embedder, model_url="http://127.0.0.1:9/v1") as teams:
        await teams.post(teams.activity(text=QUESTION))
        await wait_until(lambda: teams.stats["answered"] + teams.stats["failed"] == 1)
        [message] = teams.connector.messages()
        assert message["text"].startswith("Sorry, I could not answer this right now")
        assert not message.get("channelData")  # no feedback buttons on an error


async def test_acl_groups_and_team_policies_from_configuration(tmp_path: Path, embedder: Embedder) -> None:
    """salary-bands.md is for group hr: Alice (by AAD id) is in it, Bob is not. The HR team's
    channels may show hr documents; a group chat may not; the Ops team is switched off."""
    overrides = {
        "groups": {"teams:aad-alice": ["hr"]},
        "channels": {
            "teams:19:team-hr@thread.tacv2": {"groups": ["hr"]},
            "teams:19:team-ops@thread.tacv2": {"enabled": False},
        },
    }
    async with teams_env(tmp_path, embedder, **overrides) as teams:
        question = "How much do engineers at level 2 earn per year?"
        bob = {"id": "29:1bob", "name": "Bob", "aadObjectId": "aad-bob"}
        # Alice in a group chat: a mention, as in a channel, but no team.
        group_chat = {"conversationType": "groupChat", "isGroup": True, "id": "19:lunch@thread.v2"}
        ops = channel_mention(teams.connector.url, question, root="1700000000300")
        ops["channelData"]["team"] = {"id": "19:team-ops@thread.tacv2"}
        for body in (
            teams.activity(text=question),  # Alice, one-to-one
            teams.activity(
                text=question, conversation={"conversationType": "personal", "id": "a:1bob"}, **{"from": bob}
            ),
            channel_mention(teams.connector.url, question),  # Alice in the HR team's channel
            {**channel_mention(teams.connector.url, question, root="1700000000200"), "from": bob},
            {**channel_mention(teams.connector.url, question), "conversation": group_chat, "channelData": {}},
            ops,
        ):
            await teams.post(body)
        await wait_until(lambda: teams.stats["answered"] == 5 and teams.stats["ignored"] == 1)
        salary = {
            (a.asker, a.channel.split("@")[0]): any(
                r["source"].endswith("salary-bands.md") for r in a.retrieved
            )
            for a in await teams.rows(Answer)
        }
        assert salary == {
            ("aad-alice", "a:1alice-personal"): True,
            ("aad-bob", "a:1bob"): False,
            ("aad-alice", "19:hr-help"): True,
            ("aad-bob", "19:hr-help"): False,  # the channel may, but Bob may not
            ("aad-alice", "19:lunch"): False,  # Alice may, but the group chat may not
        }


async def test_open_mode_without_an_app_id_answers_the_emulator(tmp_path: Path, embedder: Embedder) -> None:
    async with fake_connector() as connector, slack_env(tmp_path, embedder, teams_emulator=True) as env:
        teams = TeamsEnv(env, connector, SigningKeys())
        health = await (await env.client.get("/healthz")).json()
        assert health["teams"] == "on"
        response = await teams.post(teams.activity(text=QUESTION, channelId="emulator"), token=None)
        assert response.status in (200, 201)
        await wait_until(lambda: teams.stats["answered"] == 1)
        assert connector.messages()[0]["text"].startswith("Sick leave is 10 days")


async def test_edge_cases_users_hit(teams: TeamsEnv) -> None:
    # The bot's name inside the question survives mention stripping.
    mention = channel_mention(teams.connector.url, "kbot, how many days of sick leave do I get?")
    await teams.post(mention)
    await wait_until(lambda: teams.stats["answered"] == 1)
    [row] = await teams.rows(Answer)
    assert row.question == "kbot, how many days of sick leave do I get?"
    assert "**Sources**" in teams.connector.messages()[0]["text"]  # channels also list sources inline
    # A feedback invoke whose value is not an object, and a request without a content type.
    odd = teams.activity(type="invoke", name="message/submitAction", replyToId="1", value="like")
    assert (await teams.post(odd)).status == 400
    raw = await teams.env.client.post("/api/messages", data=json.dumps(teams.activity(text="hi")))
    assert raw.status == 415
    assert teams.stats["failed"] == 0


async def test_reaction_taken_back_keeps_a_button_vote(teams: TeamsEnv) -> None:
    _answer_id, message_id = await _answered(teams)
    await teams.post(_feedback(teams, message_id, "like", "clear", "aad-bob"))
    bob = {"id": "29:bob", "name": "Bob", "aadObjectId": "aad-bob"}
    for kind in ("reactionsAdded", "reactionsRemoved"):
        body = teams.activity(
            type="messageReaction", replyToId=message_id, **{kind: [{"type": "heart"}], "from": bob}
        )
        await teams.post(body)
    await wait_until(lambda: teams.stats["feedback_recorded"] == 3)
    assert {(v.voter, v.value, v.origin, v.comment) for v in await teams.rows(Vote)} == {
        ("aad-bob", 1, "feedback", "clear")
    }


async def test_failing_typing_indicator_does_not_cost_the_answer(teams: TeamsEnv) -> None:
    teams.connector.fail_typing = 5
    await teams.post(teams.activity(text=QUESTION))
    await wait_until(lambda: teams.stats["answered"] + teams.stats["failed"] == 1)
    assert teams.stats["answered"] == 1
    assert teams.connector.messages()[0]["text"].startswith("Sick leave is 10 days per year")


async def test_single_tenant_bot_refuses_other_tenants(tmp_path: Path, embedder: Embedder) -> None:
    async with teams_env(tmp_path, embedder, teams_tenant_id=TENANT) as teams:
        stranger = teams.activity(
            text=QUESTION,
            conversation={"conversationType": "personal", "tenantId": "other-tenant", "id": "a:1x"},
            channelData={"tenant": {"id": "other-tenant"}},
        )
        assert (await teams.post(stranger)).status == 403
        assert (await teams.post(teams.activity(text=QUESTION))).status in (200, 201)
        await wait_until(lambda: teams.stats["answered"] == 1)


async def test_a_question_orphaned_by_a_dead_server_is_answered_from_its_stored_reference(
    teams: TeamsEnv,
) -> None:
    from botbuilder.core import TurnContext
    from botbuilder.schema import Activity

    from bot.claims import Claims
    from bot.conversation import IncomingMessage

    activity = Activity().deserialize(teams.activity(text=QUESTION))
    reference = TurnContext.get_conversation_reference(activity).serialize()
    message = IncomingMessage(
        platform="teams", key="teams:msg:orphan", user="teams:u1", channel=activity.conversation.id,
        thread=activity.conversation.id, text=QUESTION, addressed=True, private=True,
    )  # fmt: skip
    service = teams.env.runtime.service
    claimed = await service.ledger.claim_question(
        message.key, platform="teams", actor=message.user, window=timedelta(minutes=1), limit=0,
        holder="a-server-that-died", lease=timedelta(seconds=-1),
        payload=Claims.payload(message, {"reference": reference}),
    )  # fmt: skip
    assert claimed == "accepted"
    assert await service.sweep() == 1
    await wait_until(lambda: service.stats["answered"] == 1)
    [answer] = teams.connector.messages()
    assert answer["text"].startswith("Sick leave is 10 days per year [1]")
    assert answer["conversation"]["id"] == activity.conversation.id
    assert await service.sweep() == 0  # settled: nobody answers it again
