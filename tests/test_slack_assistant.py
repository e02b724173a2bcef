"""Slack's AI-app surfaces: suggested prompts for new assistant threads and the agent's Messages
tab, thread titles, and App Home with what kbot answers from and the asker's own questions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot import suggestions
from bot.slack import render
from bot.slack.assistant import PROMPTS_TITLE
from knowledge.embeddings import Embedder
from tests.fake_slack import wait_until
from tests.slack_env import SlackEnv, blocks_text, mention, message, slack_env
from tests.test_slack import click

SICK = "How many days of sick leave do I get?"
PRIVATE = "Can I take leave for my IVF treatment?"


@pytest.fixture
async def env(tmp_path: Path, embedder: Embedder) -> AsyncIterator[SlackEnv]:
    async with slack_env(tmp_path, embedder) as e:
        yield e


async def ask_around(env: SlackEnv) -> None:
    """Two people ask the same question in channels; one asks something else, once, in a DM."""
    await env.event(mention(SICK, user="U1"))
    await env.event(mention(SICK.lower().rstrip("?") + " ?", user="U2"))  # the same, written differently
    await env.event(message(PRIVATE, user="U3", channel="D3", channel_type="im"))
    await wait_until(lambda: env.stats["answered"] == 3)


def prompts_sent(env: SlackEnv) -> list[dict[str, Any]]:
    return [c.params for c in env.slack.named("assistant.threads.setSuggestedPrompts")]


async def test_a_new_assistant_thread_gets_the_most_asked_questions(env: SlackEnv) -> None:
    await ask_around(env)
    started = {
        "type": "assistant_thread_started",
        "assistant_thread": {
            "user_id": "U4",
            "context": {"channel_id": "C1", "team_id": "T0TEAM", "enterprise_id": None},
            "channel_id": "D4",
            "thread_ts": "1729999327.187299",
        },
        "event_ts": "1729999327.187299",
    }
    assert (await env.event(started)).status == 200
    await wait_until(lambda: bool(prompts_sent(env)))
    [sent] = prompts_sent(env)
    assert (sent["channel_id"], sent["thread_ts"], sent["title"]) == (
        "D4",
        "1729999327.187299",
        PROMPTS_TITLE,
    )
    prompts = sent["prompts"]
    assert 1 <= len(prompts) <= 4 and all(set(p) == {"title", "message"} for p in prompts)
    messages = [p["message"] for p in prompts]
    # Asked by two people: first. Asked once, in private: never offered to others.
    assert messages[0].casefold().startswith("how many days of sick leave do i get")
    assert not any("IVF" in m for m in messages)
    # The rest are the handbook's documents that everyone may read (not the restricted salary bands).
    assert all(m.startswith("What does “") for m in messages[1:]) and len(messages) == 4
    assert not any("Salary" in m for m in messages)


async def test_the_agents_messages_tab_gets_prompts_without_a_thread(env: SlackEnv) -> None:
    await ask_around(env)
    opened = {"type": "app_home_opened", "user": "U4", "channel": "D4", "tab": "messages", "event_ts": "1.2"}
    assert (await env.event(opened)).status == 200
    await wait_until(lambda: bool(prompts_sent(env)))
    [sent] = prompts_sent(env)
    # Agent apps take prompts for the whole conversation: with a thread_ts Slack ignores them.
    assert sent["channel_id"] == "D4" and "thread_ts" not in sent


async def test_suggestions_need_two_askers(env: SlackEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    await ask_around(env)
    db = env.runtime.service.answerer.kb.db
    monkeypatch.setattr(suggestions, "MIN_ASKERS", 3)
    assert not any("sick" in q.casefold() for q in await suggestions.most_asked(db, ["handbook"]))
    monkeypatch.setattr(suggestions, "MIN_ASKERS", 1)
    asked = await suggestions.most_asked(db, ["handbook"])
    assert any("sick" in q.casefold() for q in asked)
    # Even asked by anyone, a question whose answer used restricted documents is no suggestion.
    assert await suggestions.most_asked(db, ["elsewhere"]) == []


async def test_a_dm_thread_is_titled_after_its_first_question(env: SlackEnv) -> None:
    root = "1729999400.000100"
    await env.event(message(SICK, channel="D1", channel_type="im", thread_ts=root))
    await env.event(message("And a doctor's note?", channel="D1", channel_type="im", thread_ts=root))
    await wait_until(lambda: env.stats["answered"] == 2)
    [titled] = [c.params for c in env.slack.named("assistant.threads.setTitle")]
    assert (titled["channel_id"], titled["thread_ts"], titled["title"]) == ("D1", root, SICK)


async def test_app_home_shows_the_collections_feedback_help_and_my_questions(env: SlackEnv) -> None:
    await env.event(mention(SICK, user="U1"))
    await wait_until(lambda: env.stats["answered"] == 1)
    answer_ts = env.shown()[-1]["ts"]
    answer_id = env.shown()[-1]["blocks"][-1]["elements"][0]["value"]
    await env.interact(click(render.VOTE_DOWN, answer_id, answer_ts, user="U1"))
    await wait_until(lambda: env.stats["feedback_recorded"] == 1)
    opened = {"type": "app_home_opened", "user": "U1", "channel": "D1", "tab": "home", "event_ts": "1.3"}
    await env.event(opened)
    await wait_until(lambda: bool(env.slack.named("views.publish")))
    [published] = [c.params for c in env.slack.named("views.publish")]
    assert published["user_id"] == "U1" and published["view"]["type"] == "home"
    shown = blocks_text(published["view"])
    assert "*handbook*: " in shown and " documents" in shown
    assert "Suggest a better answer" in shown and "👎 asks what was wrong" in shown
    assert f"{SICK}  ·  👎" in shown  # my question, with my vote on its answer
    # Someone who never asked sees how to start.
    await env.event({**opened, "user": "U9", "event_ts": "1.4"})
    await wait_until(lambda: len(env.slack.named("views.publish")) == 2)
    assert "You have not asked anything yet" in blocks_text(
        env.slack.named("views.publish")[1].params["view"]
    )


def test_the_example_manifest_subscribes_to_every_event_kbot_handles() -> None:
    import yaml

    manifest = yaml.safe_load(
        (Path(__file__).parent.parent / "examples" / "slack-app-manifest.yml").read_text()
    )
    events = set(manifest["settings"]["event_subscriptions"]["bot_events"])
    handled = {"app_mention", "message.im", "message.channels", "reaction_added", "reaction_removed"}
    assert handled | {"app_home_opened", "assistant_thread_started"} <= events
    features = manifest["features"]
    assert features["app_home"]["home_tab_enabled"] and "agent_view" in features
    assert 1 <= len(features["agent_view"]["suggested_prompts"]) <= 4
    assert {"chat:write", "reactions:read", "im:history"} <= set(manifest["oauth_config"]["scopes"]["bot"])
