"""The types every chat adapter speaks: a message kbot may answer, feedback on an answer, and
how one answer is shown on a platform (:class:`Reply`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from agent.answering import AnswerResult


@dataclass(frozen=True)
class IncomingMessage:
    """A message someone wrote where kbot can see it."""

    platform: str
    key: str  # unique per message on the platform: the dedupe key
    user: str
    channel: str
    thread: str  # conversation (memory) and reply thread; "" for none
    text: str
    addressed: bool  # a mention or a direct message: answer whatever the channel policy says
    # Only the asker sees the answer (a DM, a personal chat, the web chat). Otherwise everyone in
    # the place reads it, so only the groups its policy grants apply: shared is the safe default.
    private: bool = False
    in_thread: bool = False  # posted as a reply inside an existing thread
    mentions_others: bool = False  # names other people (and not kbot): not addressed to kbot
    places: tuple[str, ...] = ()  # broader places whose channel policy applies (a Teams team)
    identities: tuple[str, ...] = ()  # more ids of the user for Settings.groups (their team…)
    # Nobody vouches for who asked (the Teams Emulator's open endpoint): no ACL group applies.
    anonymous: bool = False
    # More keys than the user that the rate limit and fair slots count: an anonymous web asker's
    # hashed address ("addr:…"; a new cookie is a new user for free). Stored: never a raw address.
    rate_keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class FeedbackEvent:
    """A vote, a vote taken back, or a correction, on an answer or on a message showing one."""

    platform: str
    user: str
    kind: Literal["vote", "unvote", "correction"]
    answer_id: str | None = None
    channel: str = ""
    message_id: str = ""  # used when answer_id is not known (reactions)
    value: int = 0  # +1 / -1; for unvote: the value taken back
    origin: str = "reaction"
    text: str = ""  # the correction, or a comment on a vote
    key: str = ""  # the platform's event id, for dedupe; "" when the platform never retries
    at: float = 0.0  # when kbot received it (epoch s), set when it is spooled: older never wins


class Reply(Protocol):
    """How an answer is shown on one platform, for one incoming message."""

    async def working(self) -> None:
        """Show that kbot is on it (status, placeholder, typing)."""

    async def status(self, lines: list[str]) -> None:
        """What kbot is doing now (:mod:`bot.status`), best-effort; the answer or a notice ends it."""

    async def update(self, text: str) -> None:
        """The answer so far (plain Markdown-ish text); a platform may throttle or ignore this."""

    async def finish(self, result: AnswerResult) -> list[str]:
        """Show the final answer with citations and feedback controls; return the message ids."""

    async def notice(self, text: str, *, private: bool = False) -> None:
        """A short message that is not an answer (rate limit, failure); private: only to the asker."""
