"""Holes an outsider found on the Slack side: odd timestamps, what bolt logs of forged requests,
log lines forged with CR/LF, and feedback payloads naming an answer their message never showed."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import select

from bot.slack import render
from kbot.db.models import Correction, Vote
from kbot.logs import PAYLOAD_LOGGERS, TEXT_FORMAT, TextFormatter
from knowledge.embeddings import Embedder
from tests.fake_slack import event_body, sign, wait_until
from tests.slack_env import SlackEnv, mention, slack_env
from tests.test_slack import QUESTION, answered, click

MARKER = "BODY-MARKER-7f3a"


@pytest.fixture
async def env(tmp_path: Path, embedder: Embedder) -> AsyncIterator[SlackEnv]:
    async with slack_env(tmp_path, embedder) as e:
        yield e


async def rows(env: SlackEnv, model: type) -> list:  # type: ignore[type-arg]
    async with env.runtime.service.ledger._db.session() as s:
        return list((await s.scalars(select(model))).all())


@pytest.mark.parametrize("timestamp", ["abc", "1796174187.614", "-1", "１２３", "9" * 40])
async def test_odd_timestamps_are_401_not_500(env: SlackEnv, timestamp: str) -> None:
    body = event_body(mention(QUESTION), "EvODD")
    headers = {**sign(body), "Content-Type": "application/json", "X-Slack-Request-Timestamp": timestamp}
    response = await env.client.post("/slack/events", data=body.encode(), headers=headers)
    assert response.status == 401
    assert not env.stats


@contextmanager
def verbosity(level: int) -> Iterator[None]:
    """The payload loggers as ``kbot -vv`` (2) or ``-vvv`` (3) leaves them."""
    before = {name: logging.getLogger(name).level for name in PAYLOAD_LOGGERS}
    for name, quiet in PAYLOAD_LOGGERS.items():
        logging.getLogger(name).setLevel(quiet if level < 3 else logging.NOTSET)
    try:
        yield
    finally:
        for name, old in before.items():
            logging.getLogger(name).setLevel(old)


async def _forged(env: SlackEnv) -> int:
    body = event_body(mention(f"{MARKER}\r\n2026-01-01 INFO bot.server: forged line"), "EvFORGED")
    headers = {**sign(body, secret="not-the-secret"), "Content-Type": "application/json"}
    return (await env.client.post("/slack/events", data=body.encode(), headers=headers)).status


async def test_badly_signed_bodies_are_not_in_debug_logs(
    env: SlackEnv, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with verbosity(2):
        assert await _forged(env) == 401
    assert MARKER not in caplog.text
    assert "bad signature" in caplog.text  # what happened is still said, without the body
    caplog.clear()
    with verbosity(3):  # everything, when asked for: the check above can see the body
        assert await _forged(env) == 401
    assert MARKER in caplog.text


def test_text_log_lines_escape_control_characters() -> None:
    record = logging.LogRecord(
        "bot.web", logging.INFO, __file__, 1, "asked: %s", ("a\r\n2026 INFO forged\x1b[2J\u2028",), None
    )
    line = TextFormatter(TEXT_FORMAT).format(record)
    assert "\n" not in line and "\r" not in line and "\x1b" not in line and "\u2028" not in line
    assert line.endswith("asked: a\\r\\n2026 INFO forged\\x1b[2J\\u2028")
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        failed = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    assert "Traceback (most recent call last):\n" in TextFormatter(TEXT_FORMAT).format(failed)


async def test_a_vote_button_counts_only_for_the_answer_its_message_shows(env: SlackEnv) -> None:
    answer_id, ts = await answered(env)
    other_id, _ = await answered(env)
    # A signed payload whose button names another answer than the clicked message shows.
    forged = click(render.VOTE_UP, other_id, ts)
    assert (await env.interact(forged)).status == 200
    # Nor a message of another channel.
    elsewhere = click(render.VOTE_UP, answer_id, ts)
    elsewhere["container"] = {"type": "message", "message_ts": ts, "channel_id": "C9"}  # type: ignore[index]
    elsewhere["channel"] = {"id": "C9"}
    assert (await env.interact(elsewhere)).status == 200
    await wait_until(lambda: env.stats["feedback_ignored"] == 2)
    assert await rows(env, Vote) == []
    assert (await env.interact(click(render.VOTE_DOWN, answer_id, ts))).status == 200
    await wait_until(lambda: env.stats["feedback_recorded"] == 1)
    [vote] = await rows(env, Vote)
    assert (vote.answer_id, vote.value) == (answer_id, -1)


async def test_a_correction_counts_only_for_the_answer_its_message_shows(env: SlackEnv) -> None:
    answer_id, ts = await answered(env)
    other_id, _ = await answered(env)
    assert (await env.interact(click(render.SUGGEST, answer_id, ts))).status == 200
    await wait_until(lambda: bool(env.slack.named("views.open")))
    view = env.slack.named("views.open")[0].params["view"]
    typed = {render.CORRECTION_INPUT: {"type": "plain_text_input", "value": "Better."}}
    state = {"values": {render.CORRECTION_BLOCK: typed}}

    def submission(metadata: str) -> dict[str, object]:
        return {
            "type": "view_submission",
            "user": {"id": "U3"},
            "view": {**view, "id": "V1", "state": state, "private_metadata": metadata},
        }

    tampered = view["private_metadata"].replace(answer_id, other_id)
    assert (await env.interact(submission(tampered))).status == 200
    await wait_until(lambda: env.stats["feedback_ignored"] == 1)
    assert await rows(env, Correction) == []
    assert (await env.interact(submission(view["private_metadata"]))).status == 200
    await wait_until(lambda: env.stats["feedback_recorded"] == 1)
    [correction] = await rows(env, Correction)
    assert (correction.answer_id, correction.text) == (answer_id, "Better.")
