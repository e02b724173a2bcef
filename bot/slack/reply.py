"""One answer shown in Slack: a placeholder, throttled streaming updates, the final message.

Slack rate-limits ``chat.update`` per workspace (Tier 3: about 50 a minute), so partial updates
are best-effort: at most one per ``interval`` per message, only while the workspace-wide
:class:`UpdateBudget` has room, and a failed one is logged and skipped, never fatal. The final
text always goes out (with retries). An answer longer than one section block continues in
further messages in the same thread; the last one carries the sources and the feedback buttons.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse

from agent.answering import AnswerResult
from bot.slack import render
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
        budget: UpdateBudget | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._channel = channel
        self._thread_ts = thread_ts
        self._user = user
        self._interval = interval
        self._links = links
        self._clock = clock
        self._budget = budget or UpdateBudget()
        self._messages: list[str] = []  # ts of the messages showing this answer, in order
        self._shown: list[str] = []  # what each of them shows now
        self._last_update = float("-inf")

    async def working(self) -> None:
        response = await call_slack(
            "chat.postMessage",
            self._client.chat_postMessage(
                channel=self._channel, thread_ts=self._thread_ts, text=render.WORKING
            ),
        )
        self._messages.append(str(response["ts"]))
        self._shown.append(render.WORKING)

    async def update(self, text: str) -> None:
        now = self._clock()
        if now - self._last_update < self._interval or not self._budget.take():
            return  # a later update, or finish(), shows it
        self._last_update = now
        parts = render.split_text(render.to_mrkdwn(text))
        if not parts:
            return
        parts[-1] += CURSOR
        try:
            await self._show(parts, last_blocks=[])
        except ChatError as exc:
            # Only the final text matters; back off and let finish() show it.
            self._interval = min(max(self._interval * 2, 2.0), 30.0)
            log.warning("streaming update skipped (%s); next in %.0f s at the earliest", exc, self._interval)

    async def finish(self, result: AnswerResult) -> list[str]:
        body = render.link_markers(render.to_mrkdwn(result.answer), result.citations, self._links)
        parts = render.split_text(body) or ["…"]
        extra: list[dict[str, Any]] = []
        if result.citations:
            sources = render.citation_text(result.citations, self._links)
            extra.append(render.section(render.split_text(sources)[0]))
        if result.status != "error":
            extra += render.feedback_blocks(result.answer_id)
        await self._show(parts, last_blocks=extra)
        return list(self._messages)

    async def notice(self, text: str, *, private: bool = False) -> None:
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
        elif self._messages:  # replace the placeholder rather than leave it hanging
            await self._show([render.escape(text)], last_blocks=[])
        else:
            await call_slack(
                "chat.postMessage",
                self._client.chat_postMessage(
                    channel=self._channel, thread_ts=self._thread_ts, text=render.escape(text)
                ),
            )

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


async def call_slack(method: str, call: Awaitable[AsyncSlackResponse]) -> AsyncSlackResponse:
    """Await one Web API call; Slack's refusals and network failures become :class:`ChatError`."""
    try:
        return await call
    except SlackApiError as exc:
        data = exc.response.data
        reason = data.get("error") if isinstance(data, dict) else f"HTTP {exc.response.status_code}"
        raise ChatError(f"Slack refused {method}: {reason}") from exc
    except (SlackClientError, aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise ChatError(f"Slack could not be reached for {method}: {exc or type(exc).__name__}") from exc
