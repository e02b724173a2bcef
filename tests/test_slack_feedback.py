"""The 👎 button's "What was wrong?" dialog: the vote is kept at once, the reasons become its comment,
and a forged or malformed submission stores nothing and breaks nothing."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot import metrics
from bot.slack import feedback, render
from kbot.db.models import Vote
from knowledge.embeddings import Embedder
from tests.fake_slack import wait_until
from tests.slack_env import SlackEnv, slack_env
from tests.test_slack import answered, click, rows

TRIGGER = "13345224609.738474920.8088930838d88f008e0"


@pytest.fixture
async def env(tmp_path: Path, embedder: Embedder) -> AsyncIterator[SlackEnv]:
    async with slack_env(tmp_path, embedder) as e:
        yield e


def submission(
    view: dict[str, Any],
    options: list[Any] | None,
    text: str | None,
    *,
    user: str | None = "U3",
    **changes: Any,
) -> dict[str, Any]:
    """A view_submission of ``view`` with these boxes ticked (option values) and this text typed."""
    values: dict[str, Any] = {}
    if options is not None:
        selected = [{"text": {"type": "plain_text", "text": "x"}, "value": o} for o in options]
        values[feedback.REASONS_BLOCK] = {
            feedback.REASONS_INPUT: {"type": "checkboxes", "selected_options": selected}
        }
    if text is not None:
        values[feedback.DETAIL_BLOCK] = {feedback.DETAIL_INPUT: {"type": "plain_text_input", "value": text}}
    body: dict[str, Any] = {
        "type": "view_submission",
        "trigger_id": "1.2.3",
        "view": {**view, "id": "V1", "state": {"values": values}, **changes},
    }
    if user is not None:
        body["user"] = {"id": user}
    return body


async def comments(env: SlackEnv) -> set[tuple[str, str, int, str, str]]:
    return {(v.answer_id, v.voter, v.value, v.origin, v.comment) for v in await rows(env, Vote)}


async def downvoted(env: SlackEnv) -> tuple[str, str, dict[str, Any]]:
    """Ask, click 👎 as U3: the answer id, its message's ts, and the dialog that opened."""
    answer_id, ts = await answered(env)
    done = env.stats["feedback_recorded"] + 1
    assert (await env.interact(click(render.VOTE_DOWN, answer_id, ts))).status == 200
    await wait_until(lambda: env.stats["feedback_recorded"] == done)
    view: dict[str, Any] = env.slack.named("views.open")[-1].params["view"]
    return answer_id, ts, view


async def test_a_downvote_click_records_the_vote_and_asks_what_was_wrong(env: SlackEnv) -> None:
    answer_id, ts, view = await downvoted(env)
    # The vote is there before the dialog is answered: closing it loses nothing.
    assert await comments(env) == {(answer_id, "U3", -1, "button", "")}
    [opened] = env.slack.named("views.open")
    assert opened.params["trigger_id"] == TRIGGER
    assert view["callback_id"] == feedback.REASONS_VIEW
    meta = json.loads(view["private_metadata"])
    assert meta == {"answer_id": answer_id, "channel": "C1", "thread": "1699999000.000001", "message": ts}
    [reasons] = [b for b in view["blocks"] if b.get("block_id") == feedback.REASONS_BLOCK]
    assert [o["value"] for o in reasons["element"]["options"]] == list(feedback.REASONS)
    assert "Suggest a better answer" in json.dumps(view, ensure_ascii=False)  # the way to the correction form
    assert len(view["title"]["text"]) <= 24  # Slack's limit for a modal title
    # The open dialog is the acknowledgement; no extra "noted" message.
    assert env.slack.named("chat.postEphemeral") == []
    # A 👍 click opens nothing.
    assert (await env.interact(click(render.VOTE_UP, answer_id, ts, user="U4"))).status == 200
    await wait_until(lambda: env.stats["feedback_recorded"] == 2)
    assert len(env.slack.named("views.open")) == 1


def counted(kind: str) -> float:
    labels = {"platform": "slack", "kind": kind, "value": "-1"}
    return metrics.REGISTRY.get_sample_value("kbot_feedback_total", labels) or 0.0


async def test_the_reasons_are_kept_as_the_votes_comment(env: SlackEnv) -> None:
    votes, reasons = counted("vote"), counted("reason")
    answer_id, ts, view = await downvoted(env)
    # Boxes in any order, one twice, plus the person's words: labels in the dialog's order, then the text.
    typed = "  The policy changed in 2026; it is 12 days now.  "
    body = submission(view, ["missing_info", "wrong_facts", "missing_info"], typed)
    response = await env.interact(body)
    assert response.status == 200 and await response.text() == ""  # the dialog closes
    await wait_until(lambda: env.stats["feedback_recorded"] == 2)
    comment = "Wrong or outdated facts; Missing information; The policy changed in 2026; it is 12 days now."
    assert await comments(env) == {(answer_id, "U3", -1, "button", comment)}
    # One 👎 in the metrics, with its reasons: not two votes.
    assert (counted("vote") - votes, counted("reason") - reasons) == (1, 1)
    await wait_until(
        lambda: any("reasons are saved" in c.params["text"] for c in env.slack.named("chat.postEphemeral"))
    )
    [told] = env.slack.named("chat.postEphemeral")
    assert (told.params["channel"], told.params["user"], told.params["thread_ts"]) == (
        "C1",
        "U3",
        "1699999000.000001",
    )
    # Clicking 👎 again keeps the comment (same value); text alone replaces it.
    assert (await env.interact(click(render.VOTE_DOWN, answer_id, ts))).status == 200
    await wait_until(lambda: env.stats["feedback_recorded"] == 3)
    assert await comments(env) == {(answer_id, "U3", -1, "button", comment)}
    await env.interact(submission(view, None, "Only this."))
    await wait_until(lambda: env.stats["feedback_recorded"] == 4)
    assert await comments(env) == {(answer_id, "U3", -1, "button", "Only this.")}


async def test_an_empty_dialog_stores_nothing_and_closes(env: SlackEnv) -> None:
    answer_id, _ts, view = await downvoted(env)
    for body in (
        submission(view, [], "   "),
        submission(view, None, None),
        submission(view, ["nonsense"], ""),
    ):
        response = await env.interact(body)
        assert response.status == 200 and await response.text() == ""
    # Then a real one: when it is stored, the empty ones (no database call) are long done.
    await env.interact(submission(view, ["off_topic"], None))
    await wait_until(lambda: env.stats["feedback_recorded"] == 2)
    assert not env.stats["feedback_ignored"]
    assert await comments(env) == {(answer_id, "U3", -1, "button", "Didn't answer my question")}


async def test_forged_or_malformed_submissions_store_nothing(env: SlackEnv) -> None:
    answer_id, _ts, view = await downvoted(env)
    other_id, _other_ts = await answered(env)
    meta = json.loads(view["private_metadata"])

    def with_meta(**changes: Any) -> str:
        return json.dumps({**meta, **changes})

    garbage = submission(view, [], None)
    checkboxes = garbage["view"]["state"]["values"][feedback.REASONS_BLOCK][feedback.REASONS_INPUT]
    checkboxes["selected_options"] = [None, 3, {"value": ["wrong_facts"]}, "wrong_facts", {"value": "evil"}]
    ignored = [
        # Metadata naming another answer, another channel, another message: not what was shown there.
        submission(view, ["other"], "x", private_metadata=with_meta(answer_id=other_id)),
        submission(view, ["other"], "x", private_metadata=with_meta(channel="C9")),
        submission(view, ["other"], "x", private_metadata=with_meta(message="1.000001")),
        submission(view, ["other"], "x", private_metadata=with_meta(answer_id="not-an-answer")),
    ]
    dropped = [
        # No user, no metadata, metadata that is not kbot's, or without the message it checks against.
        submission(view, ["other"], "x", user=None),
        submission(view, ["other"], "x", private_metadata=""),
        submission(view, ["other"], "x", private_metadata="{not json"),
        submission(view, ["other"], "x", private_metadata="[1, 2]"),
        submission(view, ["other"], "x", private_metadata=with_meta(message=None)),
        submission(view, ["other"], "x", private_metadata=with_meta(answer_id=7)),
        # Garbage where the options are: nothing chosen, so nothing to store.
        garbage,
        {**submission(view, None, None), "view": {**view, "state": {"values": {feedback.REASONS_BLOCK: []}}}},
        {**submission(view, None, None), "view": {**view, "state": "nope"}},
    ]
    for body in ignored + dropped:
        response = await env.interact(body)
        assert response.status == 200 and await response.text() == ""
    await wait_until(lambda: env.stats["feedback_ignored"] == len(ignored))
    assert await comments(env) == {(answer_id, "U3", -1, "button", "")}
    # Last, a forged text longer than the box allows: cut to it; by then the rest are long done.
    response = await env.interact(submission(view, ["other"], "y" * (feedback.MAX_DETAIL + 500)))
    assert response.status == 200
    await wait_until(lambda: env.stats["feedback_recorded"] == 2)
    assert env.stats["feedback_ignored"] == len(ignored) and not env.stats["feedback_failed"]
    [vote] = await rows(env, Vote)
    assert vote.comment == "Other; " + "y" * feedback.MAX_DETAIL
    await wait_until(lambda: bool(env.slack.named("chat.postEphemeral")))
    [told] = env.slack.named("chat.postEphemeral")  # thanks once: for the one that was kept
    assert told.params["user"] == "U3" and "saved" in told.params["text"]


async def test_the_vote_counts_when_the_dialog_cannot_open(env: SlackEnv) -> None:
    answer_id, ts = await answered(env)
    env.slack.failures["views.open"] = [(200, {})]  # {"ok": false}: Slack refused it
    assert (await env.interact(click(render.VOTE_DOWN, answer_id, ts))).status == 200
    await wait_until(lambda: env.stats["feedback_recorded"] == 1)
    assert await comments(env) == {(answer_id, "U3", -1, "button", "")}
    await wait_until(lambda: bool(env.slack.named("chat.postEphemeral")))
    assert "👎" in env.slack.named("chat.postEphemeral")[0].params["text"]  # thanked as before
    # Without a trigger (never from Slack's buttons) there is no dialog either, and the vote still counts.
    no_trigger = click(render.VOTE_DOWN, answer_id, ts, user="U4")
    del no_trigger["trigger_id"]
    assert (await env.interact(no_trigger)).status == 200
    await wait_until(lambda: env.stats["feedback_recorded"] == 2)
    assert len(env.slack.named("views.open")) == 1


def test_read_reasons_takes_only_kbots_options() -> None:
    def view(selected: Any, text: Any = None) -> dict[str, Any]:
        values: dict[str, Any] = {
            feedback.REASONS_BLOCK: {feedback.REASONS_INPUT: {"selected_options": selected}}
        }
        if text is not None:
            values[feedback.DETAIL_BLOCK] = {feedback.DETAIL_INPUT: {"value": text}}
        return {"state": {"values": values}}

    assert (
        feedback.read_reasons(view([{"value": "other"}, {"value": "wrong_sources"}]))
        == "Wrong sources; Other"
    )
    assert feedback.read_reasons(view([{"value": "evil"}, "other", None], "  ")) == ""
    assert feedback.read_reasons(view("wrong_facts", 12)) == ""
    assert feedback.read_reasons(view([], "just text")) == "just text"
    assert feedback.read_reasons({}) == "" and feedback.read_reasons({"state": None}) == ""
