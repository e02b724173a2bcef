"""Answers as Slack messages: mrkdwn text, numbered citations with links, feedback buttons.

Text from the model and from documents is escaped (``&``, ``<``, ``>``), so neither can ping
``<!channel>`` or forge a link. The only live links are the ones built here to cited sources,
and their URLs are escaped too; a Markdown link the model writes is shown as ``label (url)``, so
its label cannot disguise where it points. Long answers are split into
parts of at most :data:`PART_LIMIT` characters (a section block's limit is 3,000) at paragraph,
line, sentence or word boundaries, never inside a link or a code block.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from bot.links import source_url as links_source_url

PART_LIMIT = 2900
FEEDBACK = "kbot_feedback"  # Slack's feedback_buttons element: one action, the value says which
UP, DOWN = "up:", "down:"  # its buttons' values: the sign, then the answer id
VOTE_UP = "kbot_vote_up"  # the classic buttons of messages posted before feedback_buttons: still counted
VOTE_DOWN = "kbot_vote_down"
SUGGEST = "kbot_suggest"
CORRECTION_VIEW = "kbot_correction"
CORRECTION_BLOCK = "correction"
CORRECTION_INPUT = "text"
WORKING = "_Looking through the documents…_"
WORKING_STATUS = "is looking through the documents…"  # the thread status, until the first stage

_BOLD = re.compile(r"\*\*(.+?)\*\*|__(.+?)__")
_LINK = re.compile(r"\[([^\]\n]+)\]\((https?://[^\s)]+)\)")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*$", re.MULTILINE)
_BULLET = re.compile(r"^(\s*)[*-]\s+", re.MULTILINE)
_FENCE = "```"
_SENTENCE_END = re.compile(r"[.!?。！？](?=\s|$)|[。！？]")


def escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_mrkdwn(markdown: str) -> str:
    """The model's Markdown as Slack mrkdwn: bold, links, headings and bullets; code kept as is."""
    out: list[str] = []
    for i, piece in enumerate(markdown.split(_FENCE)):
        # Odd pieces are inside code blocks: escaped, otherwise left alone.
        out.append(escape(piece) if i % 2 else _prose(escape(piece)))
    return _FENCE.join(out)


def to_markdown(markdown: str) -> str:
    """The model's Markdown for a streamed message (``markdown_text``, standard Markdown): ``&``,
    ``<`` and ``>`` escaped outside code (nothing can ping or forge), and a link it writes shown
    as ``label (url)``, as in :func:`to_mrkdwn`."""
    out: list[str] = []
    for i, piece in enumerate(markdown.split(_FENCE)):
        out.append(piece if i % 2 else _unlinked(escape(piece)))
    return _FENCE.join(out)


def markdown_markers(text: str, citations: Sequence[Mapping[str, Any]], links: Mapping[str, str]) -> str:
    """Turn ``[n]`` in :func:`to_markdown` text into a Markdown link to source n where it has a URL."""
    urls = {int(c["n"]): links_source_url(str(c["source"]), links) for c in citations}
    safe = {n: u.replace(" ", "%20").replace("(", "%28").replace(")", "%29") for n, u in urls.items() if u}
    return _marked(text, safe, "[[{n}]]({url})")


def _unlinked(text: str) -> str:
    """A Markdown link shown as ``label (url)``: its label cannot disguise where it points."""
    return _LINK.sub(lambda m: f"{m.group(1)} ({m.group(2)})", text)


def _marked(text: str, urls: Mapping[int, str | None], form: str) -> str:
    """Each ``[n]`` (not already a link) written as ``form`` where source n has a URL."""

    def link(match: re.Match[str]) -> str:
        url = urls.get(int(match.group(1)))
        return form.format(n=match.group(1), url=url) if url else match.group(0)

    return re.sub(r"\[(\d{1,2})\](?!\()", link, text)


def _prose(text: str) -> str:
    text = _HEADING.sub(r"*\1*", text)
    text = _BULLET.sub(r"\1• ", text)
    text = _BOLD.sub(lambda m: f"*{m.group(1) or m.group(2)}*", text)
    return _unlinked(text)


def source_url(source: str, links: Mapping[str, str]) -> str | None:
    """:func:`bot.links.source_url`, made safe to put between ``<`` and ``|`` in mrkdwn."""
    url = links_source_url(source, links)
    return url.replace("&", "&amp;") if url else None


def link_markers(text: str, citations: Sequence[Mapping[str, Any]], links: Mapping[str, str]) -> str:
    """Turn ``[n]`` in already-rendered mrkdwn into links to source n where it has a URL."""
    urls = {int(c["n"]): source_url(str(c["source"]), links) for c in citations}
    return _marked(text, urls, "<{url}|[{n}]>")


def citation_text(citations: Sequence[Mapping[str, Any]], links: Mapping[str, str]) -> str:
    lines = ["*Sources*"]
    for c in citations:
        title = escape(str(c.get("title") or c["source"]))
        url = source_url(str(c["source"]), links)
        name = f"<{url}|{title}>" if url else f"{title} (`{escape(str(c['source']))}`)"
        quote = escape(str(c.get("quote", "")).strip())
        lines.append(f"*[{c['n']}]* {name}" + (f"\n> {quote}" if quote else ""))
    return "\n".join(lines)


def split_text(text: str, limit: int = PART_LIMIT) -> list[str]:
    """Cut mrkdwn into parts of at most ``limit`` characters at the nicest boundary available."""
    parts: list[str] = []
    rest = text.strip()
    while len(rest) > limit:
        cut = _cut_point(rest, limit)
        head, rest = rest[:cut].rstrip(), rest[cut:].lstrip()
        if head.count(_FENCE) % 2:  # a code block continues in the next part
            head += "\n" + _FENCE
            rest = _FENCE + "\n" + rest
        parts.append(head)
    if rest:
        parts.append(rest)
    return parts


def _cut_point(text: str, limit: int) -> int:
    window = text[: limit - len(_FENCE) - 1]  # room to close a code block
    for boundary in ("\n\n", "\n"):
        at = window.rfind(boundary)
        if at > limit // 2:
            return _outside_link(window, at)
    ends = [m.end() for m in _SENTENCE_END.finditer(window)]
    if ends and ends[-1] > limit // 2:
        return _outside_link(window, ends[-1])
    at = window.rfind(" ")
    if at > limit // 2:
        return _outside_link(window, at)
    return _outside_link(window, len(window))  # CJK without punctuation, or one long word


def _outside_link(text: str, at: int) -> int:
    """Move a cut back to before a ``<…>`` link or entity that it would split."""
    opening = text.rfind("<", 0, at)
    if opening != -1 and text.find(">", opening) >= at:
        at = opening
    amp = text.rfind("&", 0, at)
    if amp != -1 and ";" not in text[amp:at] and at - amp < 6:
        at = amp
    return max(at, 1)


def section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def feedback_blocks(answer_id: str) -> list[dict[str, Any]]:
    """Slack's AI-app feedback controls (``feedback_buttons`` in a ``context_actions`` block),
    then ✏️ as a button. The feedback buttons are a toggle that sends no "deselected": each click
    is a vote, the person's last one on an answer wins (:class:`finetune.votes.VoteLog`)."""

    def choice(prefix: str, emoji: str, label: str) -> dict[str, Any]:
        return {
            "text": {"type": "plain_text", "text": emoji},
            "accessibility_label": label,
            "value": f"{prefix}{answer_id}",
        }

    return [
        {
            "type": "context_actions",
            "block_id": f"kbot_feedback:{answer_id}",
            "elements": [
                {
                    "type": "feedback_buttons",
                    "action_id": FEEDBACK,
                    "positive_button": choice(UP, "👍", "This answer was helpful"),
                    "negative_button": choice(DOWN, "👎", "This answer was not helpful"),
                }
            ],
        },
        {
            "type": "actions",
            "block_id": f"kbot_suggest:{answer_id}",
            "elements": [
                {
                    "type": "button",
                    "action_id": SUGGEST,
                    "text": {"type": "plain_text", "text": "✏️ Suggest a better answer", "emoji": True},
                    "value": answer_id,
                }
            ],
        },
    ]


def vote_of(action: Mapping[str, Any]) -> tuple[int, str] | None:
    """(+1 or -1, the answer id) a feedback click means; None for a value kbot never rendered."""
    action_id, value = action.get("action_id"), action.get("value")
    if not isinstance(value, str):
        return None
    if action_id == FEEDBACK:
        for prefix, sign in ((UP, 1), (DOWN, -1)):
            if value.startswith(prefix) and len(value) > len(prefix):
                return sign, value[len(prefix) :]
        return None
    if action_id in (VOTE_UP, VOTE_DOWN) and value:
        return (1 if action_id == VOTE_UP else -1), value
    return None


def correction_modal(answer_id: str, channel: str, thread: str, message: str) -> dict[str, Any]:
    """The "suggest a better answer" form; ``message`` is the ts of the answer's message, which
    the submission is checked against (the answer must have been shown in ``channel``)."""
    meta = {"answer_id": answer_id, "channel": channel, "thread": thread, "message": message}
    return {
        "type": "modal",
        "callback_id": CORRECTION_VIEW,
        "private_metadata": json.dumps(meta),
        "title": {"type": "plain_text", "text": "Suggest a better answer"},
        "submit": {"type": "plain_text", "text": "Save"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": [
            {
                "type": "input",
                "block_id": CORRECTION_BLOCK,
                "label": {"type": "plain_text", "text": "What should kbot have answered?"},
                "element": {
                    "type": "plain_text_input",
                    "action_id": CORRECTION_INPUT,
                    "multiline": True,
                    "max_length": 3000,
                },
                "hint": {
                    "type": "plain_text",
                    "text": "Once approved by a reviewer, kbot answers with it and learns from it.",
                },
            }
        ],
    }
