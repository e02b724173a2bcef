"""Slack message text as kbot reads it: mentions, links and entities, vote reactions."""

from __future__ import annotations

import re

VOTE_REACTIONS = {"+1": 1, "thumbsup": 1, "-1": -1, "thumbsdown": -1}
# No "<" inside a match: Slack escapes it in text, and scanning past one makes these quadratic.
_MENTION = re.compile(r"<@([UW][A-Z0-9]+)(?:\|[^<>]*)?>")
_LINK = re.compile(
    r"<(https?://[^|<>]+)\|([^<>]+)>|<(https?://[^<>]+)>|<#C\w+\|([^<>]*)>|<!(here|channel|everyone)>"
)


def vote_value(reaction: str) -> int | None:
    """+1 / -1 for 👍 / 👎 reactions, skin tones included (``+1::skin-tone-3``); None otherwise."""
    return VOTE_REACTIONS.get(reaction.split("::", 1)[0])


def mentions(text: str) -> set[str]:
    """User ids mentioned in a message (``<@U123>`` or the older ``<@U123|name>``)."""
    return set(_MENTION.findall(text))


def clean_text(text: str, bot_user_id: str | None) -> str:
    """A Slack message as the question it asks: kbot's mention gone, links and entities readable."""
    if bot_user_id:
        text = re.sub(rf"<@{re.escape(bot_user_id)}(\|[^<>]*)?>", " ", text)

    def readable(m: re.Match[str]) -> str:
        if m.group(1):
            return f"{m.group(2)} ({m.group(1)})"
        if m.group(3):
            return m.group(3)
        if m.group(4) is not None:
            return f"#{m.group(4)}"
        return f"@{m.group(5)}"

    text = _LINK.sub(readable, text)
    text = text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    return " ".join(text.split())
