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
VOTE_UP = "kbot_vote_up"
VOTE_DOWN = "kbot_vote_down"
SUGGEST = "kbot_suggest"
CORRECTION_VIEW = "kbot_correction"
CORRECTION_BLOCK = "correction"
CORRECTION_INPUT = "text"
WORKING = "_Looking through the documents…_"

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


def _prose(text: str) -> str:
    text = _HEADING.sub(r"*\1*", text)
    text = _BULLET.sub(r"\1• ", text)
    text = _BOLD.sub(lambda m: f"*{m.group(1) or m.group(2)}*", text)
    return _LINK.sub(lambda m: f"{m.group(1)} ({m.group(2)})", text)


def source_url(source: str, links: Mapping[str, str]) -> str | None:
    """:func:`bot.links.source_url`, made safe to put between ``<`` and ``|`` in mrkdwn."""
    url = links_source_url(source, links)
    return url.replace("&", "&amp;") if url else None


def link_markers(text: str, citations: Sequence[Mapping[str, Any]], links: Mapping[str, str]) -> str:
    """Turn ``[n]`` in already-rendered mrkdwn into links to source n where it has a URL."""
    urls = {int(c["n"]): source_url(str(c["source"]), links) for c in citations}

    def link(match: re.Match[str]) -> str:
        url = urls.get(int(match.group(1)))
        return f"<{url}|[{match.group(1)}]>" if url else match.group(0)

    return re.sub(r"\[(\d{1,2})\](?!\()", link, text)


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


def feedback_block(answer_id: str) -> dict[str, Any]:
    def button(action_id: str, label: str) -> dict[str, Any]:
        return {
            "type": "button",
            "action_id": action_id,
            "text": {"type": "plain_text", "text": label, "emoji": True},
            "value": answer_id,
        }

    return {
        "type": "actions",
        "block_id": f"kbot_feedback:{answer_id}",
        "elements": [
            button(VOTE_UP, "👍 Helpful"),
            button(VOTE_DOWN, "👎 Not helpful"),
            button(SUGGEST, "✏️ Suggest a better answer"),
        ],
    }


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
