"""The shape a Slack request body must have before bolt reads it, and safe reads of its fields.

Bolt reads fields of the body while it matches listeners (``body["event"]["type"]``,
``body["actions"][0]``, ``body["view"]["type"]``, ``body["event"]["message"].get(…)``); a
signed body whose fields have other types would fail inside bolt and be answered 500. Slack
always sends them as :func:`problem` expects, so anything else is the sender's mistake: 400.
The listeners read every other field through :func:`field`, which never fails.
"""

from __future__ import annotations

import json
from typing import Any


def problem(body: dict[str, Any]) -> str | None:
    """Why bolt cannot be given ``body``, in a sentence; None when it can."""
    event = body.get("event", {"type": ""})
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        return "'event' must be an object with a string 'type'."
    if any(not isinstance(event.get(name, {}), dict | None) for name in ("message", "previous_message")):
        return "an event's 'message' and 'previous_message' must be objects."
    actions = body.get("actions", [{}])
    if not isinstance(actions, list) or not actions or not all(isinstance(a, dict) for a in actions):
        return "'actions' must be a list of objects."
    view = body.get("view", {"type": ""})
    if not isinstance(view, dict) or not isinstance(view.get("type"), str):
        return "'view' must be an object with a string 'type'."
    return None


def field(data: object, *path: str) -> str:
    """The string at ``data[path[0]][path[1]]…``; "" where a step is missing or of another type."""
    for key in path:
        if not isinstance(data, dict):
            return ""
        data = data.get(key)
    return data if isinstance(data, str) else ""


def modal_metadata(view: object) -> dict[str, Any]:
    """The ``private_metadata`` kbot's own modal wrote, as a dict; anything else (garbage, a
    list, nesting deep enough to blow the parser) is an empty dict, read field by field after."""
    try:
        meta = json.loads(field(view, "private_metadata") or "{}")
    except (ValueError, RecursionError):
        return {}
    return meta if isinstance(meta, dict) else {}
