"""The "What was wrong?" dialog after a 👎 click, and its answers kept as the vote's comment.

A click on 👎 opens this modal with the click's ``trigger_id`` (first: the trigger expires 3 s
after the click) and records the vote as before, so closing the dialog loses nothing. Its
``private_metadata`` names the answer, the channel, the thread and the ts of the message that
showed it, as the correction modal's does. A submission
becomes a 👎 vote again, now with a comment: the chosen reasons' labels, then the person's own
words (``"Wrong or outdated facts; Missing information; the policy changed in 2026"``), which
:class:`finetune.votes.VoteLog` keeps with the vote. ``ChatService`` counts it only if that
message in that channel shows that answer, so edited metadata stores nothing.

A 👎 *reaction* opens nothing: reaction events carry no ``trigger_id``, and Slack opens a modal
only in answer to a click.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from slack_bolt.context.ack.async_ack import AsyncAck
from slack_sdk.web.async_client import AsyncWebClient

from bot.chat import ChatService
from bot.conversation import FeedbackEvent
from bot.reasons import MAX_DETAIL, REASONS, comment
from bot.slack.calls import call_slack
from bot.slack.payload import field, modal_metadata
from kbot.errors import KbotError

log = logging.getLogger(__name__)
PLATFORM = "slack"
REASONS_VIEW = "kbot_downvote_reasons"
REASONS_BLOCK = "reasons"
REASONS_INPUT = "choices"
DETAIL_BLOCK = "detail"
DETAIL_INPUT = "text"
Tell = Callable[[str, str, str | None, str], Awaitable[None]]


def reasons_modal(answer_id: str, channel: str, thread: str, message: str) -> dict[str, Any]:
    """The dialog; ``message`` is the ts of the answer's message, which the submission is checked against."""
    meta = {"answer_id": answer_id, "channel": channel, "thread": thread, "message": message}
    options = [{"text": {"type": "plain_text", "text": label}, "value": v} for v, label in REASONS.items()]
    return {
        "type": "modal",
        "callback_id": REASONS_VIEW,
        "private_metadata": json.dumps(meta),
        "title": {"type": "plain_text", "text": "What was wrong?"},
        "submit": {"type": "plain_text", "text": "Send"},
        "close": {"type": "plain_text", "text": "Skip"},
        "blocks": [
            {
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": "Your 👎 is recorded. Saying why helps kbot learn."}],
            },
            {
                "type": "input",
                "block_id": REASONS_BLOCK,
                "optional": True,
                "label": {"type": "plain_text", "text": "The answer…"},
                "element": {"type": "checkboxes", "action_id": REASONS_INPUT, "options": options},
            },
            {
                "type": "input",
                "block_id": DETAIL_BLOCK,
                "optional": True,
                "label": {"type": "plain_text", "text": "Anything else? (optional)"},
                "element": {
                    "type": "plain_text_input",
                    "action_id": DETAIL_INPUT,
                    "multiline": True,
                    "max_length": MAX_DETAIL,
                },
            },
            {
                "type": "context",
                "elements": [
                    {
                        "type": "mrkdwn",
                        "text": "Know the right answer? Use *✏️ Suggest a better answer* under kbot's reply.",
                    }
                ],
            },
        ],
    }


def read_reasons(view: dict[str, Any]) -> str:
    """The comment a submitted dialog amounts to; "" when nothing was chosen or written.

    As :func:`bot.reasons.comment` makes it from the ticked boxes and the text."""
    chosen = [field(option, "value") for option in _selected_options(view)]
    return comment(chosen, field(view, "state", "values", DETAIL_BLOCK, DETAIL_INPUT, "value"))


def _selected_options(view: dict[str, Any]) -> list[Any]:
    """The checkboxes' ``selected_options`` list ([] where any step is missing or of another type);
    :func:`bot.slack.payload.field` reads strings only."""
    data: Any = view
    for key in ("state", "values", REASONS_BLOCK, REASONS_INPUT, "selected_options"):
        data = data.get(key) if isinstance(data, dict) else None
    return data if isinstance(data, list) else []


class DownvoteReasons:
    """Opens the dialog for a 👎 click and stores what comes back."""

    def __init__(self, client: AsyncWebClient, service: ChatService, tell: Tell) -> None:
        self.client = client
        self.service = service
        self.tell = tell

    async def ask(
        self, trigger_id: str, answer_id: str, channel: str, thread: str | None, message: str
    ) -> bool:
        """Open the dialog; False when it could not be (no trigger, or Slack refused)."""
        if not (trigger_id and answer_id):
            return False
        modal = reasons_modal(answer_id, channel, thread or "", message)
        try:
            await call_slack("views.open", self.client.views_open(trigger_id=trigger_id, view=modal))
        except KbotError as exc:
            # The vote itself is recorded either way; the reasons are a bonus.
            log.warning("could not open the 👎 reasons dialog: %s", exc)
            return False
        return True

    async def on_submit(self, ack: AsyncAck, body: dict[str, Any], view: dict[str, Any]) -> None:
        # Ack (and close the dialog) first: Slack gives a submission 3 s, a busy database may take longer.
        await ack()
        comment = read_reasons(view)
        meta = modal_metadata(view)
        user, channel, thread = field(body, "user", "id"), field(meta, "channel"), field(meta, "thread")
        answer_id, message = field(meta, "answer_id"), field(meta, "message")
        if not comment:
            return  # nothing chosen, nothing written: the 👎 stands as it is
        if not (user and answer_id and channel and message):
            log.warning("ignored 👎 reasons without a user, answer, channel or message")
            return
        try:
            recorded = await self.service.feedback(
                FeedbackEvent(
                    platform=PLATFORM,
                    user=user,
                    kind="vote",
                    answer_id=answer_id,
                    channel=channel,
                    message_id=message,
                    value=-1,
                    origin="button",
                    text=comment,
                )
            )
            if recorded is None:
                log.warning("ignored 👎 reasons on an answer not shown in %s", channel)
                return
            reply = "Thanks, your reasons are saved with your 👎."
        except KbotError as exc:
            log.error("could not store 👎 reasons: %s", exc)
            reply = f"Sorry, your reasons could not be saved: {exc}"
        await self.tell(channel, user, thread or None, reply)
