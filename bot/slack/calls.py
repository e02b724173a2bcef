"""Every Slack Web API call kbot makes goes through :func:`call_slack`: one error type for adapters."""

from __future__ import annotations

from collections.abc import Awaitable

import aiohttp
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.web.async_slack_response import AsyncSlackResponse

from kbot.errors import ChatError


async def call_slack(method: str, call: Awaitable[AsyncSlackResponse]) -> AsyncSlackResponse:
    """Await one Web API call; Slack's refusals and network failures become :class:`ChatError`."""
    try:
        return await call
    except SlackApiError as exc:
        data = exc.response.data
        reason = data.get("error") if isinstance(data, dict) else f"HTTP {exc.response.status_code}"
        raise ChatError(f"Slack refused {method}: {reason}", str(reason or "")) from exc
    except (SlackClientError, aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise ChatError(f"Slack could not be reached for {method}: {exc or type(exc).__name__}") from exc
