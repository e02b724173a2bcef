"""Teams' feedback buttons on kbot's answers, with kbot's own dialog (the custom feedback loop).

Answers set ``channelData.feedbackLoop = {"type": "custom"}`` (:mod:`bot.teams.render`; never with
the legacy ``feedbackLoopEnabled``: Teams rejects both). A click on 👍 or 👎 then arrives as an
``invoke`` ``message/fetchTask`` whose ``value.data.actionValue.reaction`` is ``like`` or
``dislike``. kbot records the vote at once (closing the dialog loses nothing, as in Slack) and
answers with a task-module dialog, an Adaptive Card:

- 👎: what was wrong (the reasons of :mod:`bot.reasons`, several may be ticked), anything else,
  and a better answer, all optional;
- 👍: what was good, optional.

Submitting it sends ``message/submitAction`` with ``actionName: "feedback"`` and
``actionValue: {"reaction", "feedback"}``, ``feedback`` being the card's inputs as a JSON string.
kbot records the vote again, now with the reasons and words as its comment, and a better answer
as a correction: the same vote log and review queue as Slack's and the web chat's. The default
loop's form (``{"feedbackText": "…"}``) is read the same way.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from botbuilder.core import InvokeResponse
from botbuilder.schema import Activity, Attachment, ChannelAccount
from botbuilder.schema.teams import TaskModuleContinueResponse, TaskModuleResponse, TaskModuleTaskInfo

from bot.chat import ChatService
from bot.conversation import FeedbackEvent
from bot.reasons import MAX_DETAIL, REASONS, comment
from kbot.errors import KbotError

log = logging.getLogger(__name__)
PLATFORM = "teams"
FETCH = "message/fetchTask"
SUBMIT = "message/submitAction"
REACTIONS = {"like": 1, "dislike": -1}
CARD = "application/vnd.microsoft.card.adaptive"


def dialog(reaction: str) -> TaskModuleResponse:
    """The task-module response for a click on ``reaction`` (``like`` or ``dislike``)."""
    liked = reaction == "like"
    body: list[dict[str, Any]] = [
        {
            "type": "TextBlock",
            "wrap": True,
            "text": f"Your {'👍' if liked else '👎'} is recorded. Saying why helps kbot learn.",
        }
    ]
    if not liked:
        body.append(
            {
                "type": "Input.ChoiceSet",
                "id": "reasons",
                "label": "The answer…",
                "isMultiSelect": True,
                "style": "expanded",
                "choices": [{"title": label, "value": value} for value, label in REASONS.items()],
            }
        )
    body.append(_text("feedbackText", "What was good? (optional)" if liked else "Anything else? (optional)"))
    if not liked:
        body.append(_text("better", "Know the right answer? Suggest a better one (optional)"))
    card = {
        "type": "AdaptiveCard",
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "version": "1.5",
        "body": body,
        "actions": [{"type": "Action.Submit", "title": "Send"}],
    }
    title = "What was good?" if liked else "What was wrong?"
    return TaskModuleResponse(
        task=TaskModuleContinueResponse(
            value=TaskModuleTaskInfo(
                title=title, height="medium", width="medium", card=Attachment(content_type=CARD, content=card)
            )
        )
    )


def _text(input_id: str, label: str) -> dict[str, Any]:
    return {"type": "Input.Text", "id": input_id, "label": label, "isMultiline": True,
            "maxLength": MAX_DETAIL}  # fmt: skip


def read_form(raw: Any) -> tuple[str, str]:
    """(the vote's comment, a better answer) from the submitted form; ("", "") for none.

    Teams sends the form as a JSON string: kbot's dialog's inputs (``reasons``: the ticked values,
    comma-separated; ``feedbackText``; ``better``), or the default loop's ``{"feedbackText"}``.
    Anything that is not such JSON is the comment as it came."""
    if not raw:
        return "", ""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except (ValueError, RecursionError):
            return raw, ""
    if not isinstance(raw, dict):
        return str(raw), ""
    reasons, words, better = (raw.get(k) for k in ("reasons", "feedbackText", "better"))
    chosen = reasons.split(",") if isinstance(reasons, str) else []
    said = comment(chosen, words if isinstance(words, str) else "")  # null is no text, not "None"
    return said, (better.strip()[:MAX_DETAIL] if isinstance(better, str) else "")


class TeamsFeedback:
    """Answers the two feedback invokes; ``person`` names a Teams account as the vote log does."""

    def __init__(self, service: ChatService, person: Callable[[ChannelAccount], str]) -> None:
        self.service = service
        self.person = person

    async def invoke(self, activity: Activity, channel: str) -> InvokeResponse:
        value: Any = activity.value if isinstance(activity.value, dict) else {}
        if activity.name == FETCH:  # the click: {"data": {"actionName", "actionValue"}}
            value = value.get("data") if isinstance(value.get("data"), dict) else {}
        action: Any = value.get("actionValue") if isinstance(value.get("actionValue"), dict) else {}
        reaction = action.get("reaction")
        if value.get("actionName") != "feedback" or reaction not in REACTIONS or not activity.reply_to_id:
            return InvokeResponse(status=400)
        said, better = read_form(action.get("feedback")) if activity.name == SUBMIT else ("", "")
        events = [self._event(activity, channel, "vote", REACTIONS[reaction], said)]
        if better:
            events.append(self._event(activity, channel, "correction", 0, better))
        try:
            for event in events:
                if await self.service.feedback(event) is None:
                    return InvokeResponse(status=404)
        except KbotError as exc:
            log.error("could not record Teams feedback: %s", exc)
            return InvokeResponse(status=500)
        if activity.name == FETCH:
            return InvokeResponse(status=200, body=dialog(reaction))
        return InvokeResponse(status=200)

    def _event(self, activity: Activity, channel: str, kind: Any, value: int, text: str) -> FeedbackEvent:
        return FeedbackEvent(
            platform=PLATFORM,
            user=self.person(activity.from_property),
            kind=kind,
            channel=channel,
            message_id=activity.reply_to_id,
            value=value,
            origin="feedback",
            text=text,
        )
