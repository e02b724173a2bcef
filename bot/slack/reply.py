"""One answer shown in Slack: natively streamed where the workspace allows it, else a placeholder,
throttled ``chat.update`` streaming and the final message.

Native (:mod:`bot.slack.stream`): the thread's status shows the answer's real stages ("Reading 4
sources…") until the first text; the text streams in; ``stopStream`` adds the sources and the
feedback controls. Only thread replies stream (Slack's rule), so a top-level DM answer, or one in
a workspace that refuses streaming, takes the ``chat.update`` path below. The status is cleared
on every ending, an error or a notice included, so Slack's 2-minute timeout never has to.

On the ``chat.update`` path, Slack rate-limits ``chat.update`` per workspace (Tier 3: about 50
a minute), so partial updates are best-effort: at most one per ``interval`` per message, only
while the workspace-wide :class:`UpdateBudget` has room, and a failed one is logged and
skipped, never fatal. The final text always goes out (with retries). An answer longer than one
section block continues in further messages in the same thread; the last one carries the
sources and the feedback controls.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from slack_sdk.web.async_client import AsyncWebClient

from agent.answering import AnswerResult
from bot.slack import render
from bot.slack.calls import call_slack
from bot.slack.stream import Capabilities, NativeStream, set_status
from kbot.errors import ChatError

log = logging.getLogger(__name__)
CURSOR = " ▍"


class UpdateBudget:
    """A token bucket shared by every streaming answer of one workspace (``rate`` per second)."""

    def __init__(
        self, rate: float = 0.75, burst: float = 5, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._rate = rate
        self._burst = burst
        self._tokens = burst
        self._clock = clock
        self._at = clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


class SlackReply:
    def __init__(
        self,
        client: AsyncWebClient,
        *,
        channel: str,
        thread_ts: str | None,
        user: str,
        interval: float,
        links: Mapping[str, str],
        team: str = "",
        capabilities: Capabilities | None = None,
        budget: UpdateBudget | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._channel = channel
        self._thread_ts = thread_ts
        self._user = user
        self._team = team
        self._interval = interval
        self._links = links
        self._clock = clock
        self._can = capabilities or Capabilities()
        self._budget = budget or UpdateBudget()
        self._messages: list[str] = []  # ts of the messages showing this answer, in order
        self._shown: list[str] = []  # what each of them shows now
        self._last_update = float("-inf")
        self._stream: NativeStream | None = None
        if thread_ts and self._can.streams(team):
            self._stream = NativeStream(client, channel=channel, thread_ts=thread_ts, user=user, team=team)
        self._streamed = ""  # the answer text the native stream has shown so far
        self._status = False  # a thread status is showing
        self._texted = False  # the placeholder shows answer text (no more status lines on it)

    async def working(self) -> None:
        if self._stream and self._thread_ts and self._can.has_status(self._team):
            try:
                await set_status(self._client, self._channel, self._thread_ts, [render.WORKING_STATUS])
                self._status = True
                return
            except ChatError as exc:
                self._can.refused(self._team, "status", exc)
                log.info("no thread status (%s); posting a placeholder", exc)
        await self._placeholder()

    async def _placeholder(self) -> None:
        response = await call_slack(
            "chat.postMessage",
            self._client.chat_postMessage(
                channel=self._channel, thread_ts=self._thread_ts, text=render.WORKING
            ),
        )
        self._messages.append(str(response["ts"]))
        self._shown.append(render.WORKING)

    async def status(self, lines: list[str]) -> None:
        if self._status and self._thread_ts and not self._streamed:
            try:
                await set_status(self._client, self._channel, self._thread_ts, lines)
            except ChatError as exc:  # a status is a nicety: the answer goes on
                log.info("thread status not updated: %s", exc)
        elif len(self._messages) == 1 and not self._texted and lines and self._budget.take():
            # The placeholder says what is going on, while the workspace's update budget allows.
            try:
                await self._show([f"_{render.escape(lines[0])}_"], last_blocks=[])
            except ChatError as exc:
                log.info("placeholder not updated: %s", exc)

    async def update(self, text: str) -> None:
        now = self._clock()
        if now - self._last_update < self._interval:
            return  # a later update, or finish(), shows it
        if self._stream is not None:
            self._last_update = now
            try:
                await self._stream_text(render.to_markdown(_settled(text)))
            except ChatError as exc:
                if not self._stream.messages:
                    self._stream = None  # refused: this answer goes on through chat.update
                log.warning("streaming update skipped (%s); the final answer follows", exc)
            return
        if not self._budget.take():
            return
        self._last_update = now
        parts = render.split_text(render.to_mrkdwn(text))
        if not parts:
            return
        parts[-1] += CURSOR
        self._texted = True
        try:
            await self._show(parts, last_blocks=[])
        except ChatError as exc:
            # Only the final text matters; back off and let finish() show it.
            self._interval = min(max(self._interval * 2, 2.0), 30.0)
            log.warning("streaming update skipped (%s); next in %.0f s at the earliest", exc, self._interval)

    async def finish(self, result: AnswerResult) -> list[str]:
        extra: list[dict[str, Any]] = []
        if result.citations:
            sources = render.citation_text(result.citations, self._links)
            extra.append(render.section(render.split_text(sources)[0]))
        if result.status != "error":
            extra += render.feedback_blocks(result.answer_id)
        if self._stream is not None:
            markdown = render.to_markdown(result.answer) or "…"
            if not self._streamed:  # the whole answer at once: its [n] can link to the sources
                markdown = render.markdown_markers(markdown, result.citations, self._links)
            try:
                await self._stream_text(markdown)
                await self._stream.stop(extra)
                return list(self._stream.messages)
            except ChatError as exc:
                if self._stream.messages:
                    raise  # the answer is half shown: the failure notice finishes it
                log.info("answering through chat.update instead (%s)", exc)
                self._stream = None
        body = render.link_markers(render.to_mrkdwn(result.answer), result.citations, self._links)
        await self._show(render.split_text(body) or ["…"], last_blocks=extra)
        await self._clear_status()
        return list(self._messages)

    async def notice(self, text: str, *, private: bool = False) -> None:
        await self._clear_status()
        if private:
            await call_slack(
                "chat.postEphemeral",
                self._client.chat_postEphemeral(
                    channel=self._channel,
                    user=self._user,
                    thread_ts=self._thread_ts,
                    text=render.escape(text),
                ),
            )
        elif self._stream is not None and self._stream.open:  # end the streamed text with it
            await self._stream.append("\n\n" + render.escape(text))
            await self._stream.stop([])
        elif self._messages:  # replace the placeholder rather than leave it hanging
            await self._show([render.escape(text)], last_blocks=[])
        else:
            await call_slack(
                "chat.postMessage",
                self._client.chat_postMessage(
                    channel=self._channel, thread_ts=self._thread_ts, text=render.escape(text)
                ),
            )

    async def _stream_text(self, markdown: str) -> None:
        """Stream what of ``markdown`` is new; the first text starts the stream (or refuses it)."""
        assert self._stream is not None
        new = markdown[len(self._streamed) :] if markdown.startswith(self._streamed) else "\n\n" + markdown
        if not self._stream.messages:
            try:
                await self._stream.append(new)
            except ChatError as exc:
                self._can.refused(self._team, "stream", exc)
                raise
            await self._after_start()
        else:
            await self._stream.append(new)
        self._streamed = markdown

    async def _after_start(self) -> None:
        """The streamed message shows now: the status and any placeholder have had their turn."""
        await self._clear_status()
        for ts in self._messages:
            try:
                await call_slack("chat.delete", self._client.chat_delete(channel=self._channel, ts=ts))
            except ChatError as exc:
                log.info("placeholder not deleted: %s", exc)
        self._messages.clear()
        self._shown.clear()

    async def _clear_status(self) -> None:
        if self._status and self._thread_ts:
            self._status = False
            try:
                await set_status(self._client, self._channel, self._thread_ts, [])
            except ChatError as exc:  # Slack drops it within 2 minutes anyway
                log.info("thread status not cleared: %s", exc)

    async def _show(self, parts: list[str], *, last_blocks: list[dict[str, Any]]) -> None:
        for i, part in enumerate(parts):
            final = i == len(parts) - 1
            blocks = [render.section(part), *(last_blocks if final else [])]
            if i < len(self._messages):
                if self._shown[i] == part and not (final and last_blocks):
                    continue
                await call_slack(
                    "chat.update",
                    self._client.chat_update(
                        channel=self._channel, ts=self._messages[i], text=part, blocks=blocks
                    ),
                )
                self._shown[i] = part
            else:
                response = await call_slack(
                    "chat.postMessage",
                    self._client.chat_postMessage(
                        channel=self._channel, thread_ts=self._thread_ts, text=part, blocks=blocks
                    ),
                )
                self._messages.append(str(response["ts"]))
                self._shown.append(part)
        for ts in self._messages[len(parts) :]:  # the text got shorter (an error replaced it)
            await call_slack("chat.delete", self._client.chat_delete(channel=self._channel, ts=ts))
        del self._messages[len(parts) :], self._shown[len(parts) :]


def _settled(text: str) -> str:
    """``text`` without a Markdown link still being written: streamed text cannot be taken back,
    and a link changes how the text before it renders once its ``)`` arrives."""
    opened = text.rfind("[")
    return text[:opened] if opened != -1 and ")" not in text[opened:] else text
