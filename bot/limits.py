"""Limits every chat platform applies the same way, and how the asker hears about them.

A question longer than :data:`MAX_QUESTION` characters is cut to it; the asker is told so, in
private where the platform can, when kbot starts answering — never for chatter kbot ignores,
a duplicate delivery or a rate-limited question.
"""

from __future__ import annotations

import logging

from agent.answering import AnswerResult
from bot.chat import Reply
from kbot.errors import KbotError

log = logging.getLogger(__name__)
MAX_QUESTION = 4000  # characters
QUESTION_CUT = f"Your question was cut to its first {MAX_QUESTION} characters."


def limit_question(text: str, reply: Reply) -> tuple[str, Reply]:
    """``text`` cut to :data:`MAX_QUESTION`, and the reply that tells the asker if it was."""
    if len(text) <= MAX_QUESTION:
        return text, reply
    return text[:MAX_QUESTION], _CutNotice(reply)


class _CutNotice:
    """A :class:`~bot.chat.Reply` that first says the question was cut, then answers as ``inner``."""

    def __init__(self, inner: Reply) -> None:
        self._inner = inner

    async def working(self) -> None:
        try:
            await self._inner.notice(QUESTION_CUT, private=True)
        except KbotError as exc:  # the answer matters more than the notice
            log.warning("could not say that a question was cut: %s", exc)
        await self._inner.working()

    async def update(self, text: str) -> None:
        await self._inner.update(text)

    async def finish(self, result: AnswerResult) -> list[str]:
        return await self._inner.finish(result)

    async def notice(self, text: str, *, private: bool = False) -> None:
        await self._inner.notice(text, private=private)
