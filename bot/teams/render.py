"""Answers as Teams messages: numbered citations as Teams citation entities, the feedback loop on.

Teams shows ``[n]`` in the text as a citation whose pop-up comes from the ``Message`` entity's
``citation`` list (``appearance.name`` ≤ 80 characters, ``abstract`` ≤ 160); the entity's
``AIGeneratedContent`` marks the message as AI-written. ``channelData.feedbackLoop`` of type
``custom`` adds Teams' 👍/👎 buttons with kbot's own dialog (:mod:`bot.teams.feedback`); the legacy
``feedbackLoopEnabled`` is never sent with it (Teams rejects an activity that sets both).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from botbuilder.schema import Activity, ActivityTypes, Entity

from agent.answering import AnswerResult
from bot.limits import clip
from bot.links import source_url

_MARK = re.compile(r"\[(\d{1,2})\]")


class AIMessageEntity(Entity):  # type: ignore[misc]
    """The schema.org ``Message`` entity Teams reads citations and the AI label from.

    botbuilder's ``Entity`` serialises only ``type``; this one declares the rest.
    """

    _attribute_map: ClassVar[dict[str, dict[str, str]]] = {
        "type": {"key": "type", "type": "str"},
        "schema_type": {"key": "@type", "type": "str"},
        "context": {"key": "@context", "type": "str"},
        "id": {"key": "@id", "type": "str"},
        "additional_type": {"key": "additionalType", "type": "[str]"},
        "citation": {"key": "citation", "type": "[object]"},
    }

    def __init__(self, *, citation: list[dict[str, Any]], **kwargs: Any) -> None:
        super().__init__(type="https://schema.org/Message", **kwargs)
        self.schema_type = "Message"
        self.context = "https://schema.org"
        self.id = ""
        self.additional_type = ["AIGeneratedContent"]
        self.citation = citation


def citation_entity(citations: Sequence[Mapping[str, Any]], links: Mapping[str, str]) -> Entity:
    claims = []
    for c in citations:
        appearance: dict[str, Any] = {
            "@type": "DigitalDocument",
            "name": clip(str(c.get("title") or c["source"]), 80),
            "abstract": clip(str(c.get("quote") or c["source"]), 160),
        }
        if url := source_url(str(c["source"]), links):
            appearance["url"] = url
        claims.append({"@type": "Claim", "position": int(c["n"]), "appearance": appearance})
    return AIMessageEntity(citation=claims)


def answer_activity(
    result: AnswerResult, links: Mapping[str, str], *, inline_sources: bool = False
) -> Activity:
    """The answer as a message. ``inline_sources`` also lists the sources in the text, for
    channels, where Teams may not render citation entities."""
    text = result.answer.strip() or "…"
    marked = {int(m) for m in _MARK.findall(text)}
    missing = [c for c in result.citations if int(c["n"]) not in marked]
    if missing:  # small models forget the markers; every citation must be reachable
        text += " " + " ".join(f"[{c['n']}]" for c in missing)
    if inline_sources and result.citations:
        lines = []
        for c in result.citations:
            url = source_url(str(c["source"]), links)
            title = str(c.get("title") or c["source"])
            lines.append(f"[{c['n']}] [{title}]({url})" if url else f"[{c['n']}] {title}")
        text += "\n\n**Sources**\n\n" + "\n\n".join(lines)
    activity = Activity(type=ActivityTypes.message, text=text, text_format="markdown")
    if result.citations:
        activity.entities = [citation_entity(result.citations, links)]
    if result.status != "error":
        activity.channel_data = {"feedbackLoop": {"type": "custom"}}
    return activity
