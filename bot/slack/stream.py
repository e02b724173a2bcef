"""Slack's native AI streaming (``chat.startStream`` → ``appendStream`` → ``stopStream``) and the
thread's status line (``assistant.threads.setStatus``), with what to do where a workspace refuses.

A workspace that refuses streaming (an older Enterprise Grid, a method turned off) is learned
once, logged once, and answered through ``chat.update`` from then on (:class:`Capabilities`).
Streams are replies in a thread; channel streams name their recipient (user and team). A message
holds at most :data:`MARKDOWN_LIMIT` characters of markdown: a longer answer goes on in further
streamed messages in the thread, and the last one carries the sources and the feedback controls.
"""

from __future__ import annotations

import logging
from typing import Any

from slack_sdk.web.async_client import AsyncWebClient

from bot.slack import render
from bot.slack.calls import call_slack
from kbot.errors import ChatError

log = logging.getLogger(__name__)
MARKDOWN_LIMIT = 11_500  # Slack's limit is 12,000 per message and per call: room for a closing fence
# Errors meaning "this workspace does not stream": never worth trying again there.
REFUSED = {
    "method_deprecated",
    "not_allowed",
    "not_allowed_token_type",
    "unknown_method",
    "feature_not_enabled",
    "team_not_allowed",
    "enterprise_is_restricted",
}


class Capabilities:
    """Per workspace: whether chat.startStream and setStatus work there, learned from refusals."""

    def __init__(self, *, streaming: bool = True) -> None:
        self._streaming = streaming
        self._no_stream: set[str] = set()
        self._no_status: set[str] = set()

    def streams(self, team: str) -> bool:
        return self._streaming and team not in self._no_stream

    def has_status(self, team: str) -> bool:
        return team not in self._no_status

    def refused(self, team: str, what: str, error: ChatError) -> None:
        """Remember a refusal if it is one for the whole workspace; log it the first time."""
        if error.code not in REFUSED:
            return
        refused = self._no_stream if what == "stream" else self._no_status
        if team not in refused:
            refused.add(team)
            log.warning(
                "Slack workspace %s refused %s (%s): using %s there from now on",
                team or "?",
                "native streaming" if what == "stream" else "the thread status",
                error.code,
                "chat.update" if what == "stream" else "a placeholder message",
            )


class NativeStream:
    """One answer streamed into a thread; the first ``append`` may raise :class:`ChatError`
    (the workspace refused: fall back)."""

    def __init__(self, client: AsyncWebClient, *, channel: str, thread_ts: str, user: str, team: str) -> None:
        self._client = client
        self._channel = channel
        self._thread_ts = thread_ts
        # Outside a DM Slack must know who the stream is for.
        self._user, self._team = ("", "") if channel.startswith("D") else (user, team)
        self.messages: list[str] = []  # the ts of each streamed message, in order
        self._length = 0  # markdown characters in the open message
        self.open = False

    async def append(self, markdown: str) -> None:
        """Add text to the answer: starting the stream, or a new message when this one is full."""
        if not markdown:
            return
        for piece in (
            [markdown] if len(markdown) <= MARKDOWN_LIMIT else render.split_text(markdown, MARKDOWN_LIMIT)
        ):
            if self.open and self._length + len(piece) > MARKDOWN_LIMIT:
                await self.stop([])
            if not self.open:
                response = await call_slack(
                    "chat.startStream",
                    self._client.chat_startStream(
                        channel=self._channel,
                        thread_ts=self._thread_ts,
                        markdown_text=piece,
                        recipient_user_id=self._user or None,
                        recipient_team_id=self._team or None,
                    ),
                )
                self.messages.append(str(response["ts"]))
                self.open, self._length = True, len(piece)
            else:
                await call_slack(
                    "chat.appendStream",
                    self._client.chat_appendStream(
                        channel=self._channel, ts=self.messages[-1], markdown_text=piece
                    ),
                )
                self._length += len(piece)

    async def stop(self, blocks: list[dict[str, Any]]) -> None:
        """Finish the open message; ``blocks`` (sources, feedback) show under its text."""
        if not self.open:
            return
        self.open = False
        await call_slack(
            "chat.stopStream",
            self._client.chat_stopStream(channel=self._channel, ts=self.messages[-1], blocks=blocks or None),
        )


async def set_status(client: AsyncWebClient, channel: str, thread_ts: str, lines: list[str]) -> None:
    """Show ``lines`` as the thread's rotating loading messages; ``[]`` clears the status."""
    await call_slack(
        "assistant.threads.setStatus",
        client.assistant_threads_setStatus(
            channel_id=channel,
            thread_ts=thread_ts,
            status=lines[0] if lines else "",
            loading_messages=lines[:10] or None,
        ),
    )
