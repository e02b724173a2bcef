"""Limits every chat platform applies the same way, and how the asker hears about them.

- **Text**: whatever a platform hands over (questions, corrections, comments) goes through
  :func:`clean_text` where every platform passes, in :class:`~bot.chat.ChatService`: a lone
  UTF-16 surrogate (JSON allows ``"\\ud800"``) cannot be stored or sent on as UTF-8, so it
  becomes U+FFFD before the answer path or the vote log sees it.
- **Length**: a question longer than :data:`MAX_QUESTION` characters is cut to it (a cheap first
  bound, before any tokenizer runs); :class:`~bot.chat.ChatService` then cuts it to
  ``max_question_tokens`` tokens of the chat model (:func:`tokens_cut`). The asker is told once,
  in private where the platform can, when kbot starts answering — never for chatter kbot
  ignores, a duplicate delivery or a rate-limited question.
- **Fair turns**: :class:`FairTurns` keeps one person (or one anonymous address) from holding
  every answer slot.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING

from kbot.errors import KbotError
from kbot.locks import PerKey

if TYPE_CHECKING:  # bot.chat imports this module: the types only, at run time none
    from agent.answering import AnswerResult
    from bot.conversation import Reply

log = logging.getLogger(__name__)
MAX_QUESTION = 4000  # characters
QUESTION_CUT = f"Your question was cut to its first {MAX_QUESTION} characters."
QUESTION_TOKENS_CUT = "Your question was cut to its first {limit} tokens."
_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_text(text: str) -> str:
    """``text`` with every lone surrogate replaced by U+FFFD (a proper pair becomes its character)."""
    if not _SURROGATE.search(text):
        return text  # the common case: nothing to copy
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def clip(text: str, limit: int) -> str:
    """``text`` on one line (whitespace runs become one space), at most ``limit`` characters (…)."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def limit_question(text: str, reply: Reply) -> tuple[str, Reply]:
    """``text`` cut to :data:`MAX_QUESTION`, and the reply that tells the asker if it was."""
    if len(text) <= MAX_QUESTION:
        return text, reply
    return text[:MAX_QUESTION], _CutNotice(reply, QUESTION_CUT)


def tokens_cut(reply: Reply, limit: int) -> Reply:
    """The reply that tells the asker their question was cut to ``limit`` tokens — instead of
    the character notice, when there was one: the asker hears about the cut that held."""
    inner = reply.inner if isinstance(reply, _CutNotice) else reply
    return _CutNotice(inner, QUESTION_TOKENS_CUT.format(limit=limit))


class _CutNotice:
    """A :class:`~bot.chat.Reply` that first says the question was cut, then answers as ``inner``."""

    def __init__(self, inner: Reply, text: str) -> None:
        self.inner = inner
        self._text = text

    async def working(self) -> None:
        try:
            await self.inner.notice(self._text, private=True)
        except KbotError as exc:  # the answer matters more than the notice
            log.warning("could not say that a question was cut: %s", exc)
        await self.inner.working()

    async def status(self, lines: list[str]) -> None:
        await self.inner.status(lines)

    async def update(self, text: str) -> None:
        await self.inner.update(text)

    async def finish(self, result: AnswerResult) -> list[str]:
        return await self.inner.finish(result)

    async def notice(self, text: str, *, private: bool = False) -> None:
        await self.inner.notice(text, private=private)


class FairTurns:
    """At most ``per_key`` answers in progress per key (a person; an anonymous asker's address).

    Taken before an answer slot, so a question past its asker's share waits without holding a
    slot, and the other slots stay open to everyone else: four questions from one address (four
    cookies, four "people") take at most ``per_key`` of them. Per process, like the slots.
    """

    def __init__(self, per_key: int) -> None:
        self.per_key = per_key
        self._keys: PerKey[asyncio.Semaphore] = PerKey(lambda: asyncio.Semaphore(per_key))

    @asynccontextmanager
    async def turn(self, keys: Iterable[str]) -> AsyncIterator[None]:
        """Wait until every one of ``keys`` has a free place, and hold them meanwhile."""
        async with AsyncExitStack() as held:
            # Always taken in the same (sorted) order: two questions sharing two keys never deadlock.
            semaphores = [held.enter_context(self._keys.use(key)) for key in sorted(set(keys))]
            for semaphore in semaphores:
                await held.enter_async_context(semaphore)
            yield
