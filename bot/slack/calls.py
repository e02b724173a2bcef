"""The Slack Web API client kbot uses, and :func:`call_slack`, which every call goes through: one
error type for adapters."""

from __future__ import annotations

from collections.abc import Awaitable

import aiohttp
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
    AsyncServerErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse

from kbot.errors import ChatError
from kbot.settings import Settings


def slack_client(settings: Settings) -> AsyncWebClient:
    """The Web API client: retries on rate limits (honouring Retry-After), 5xx and dropped connections."""
    token = settings.slack_bot_token.get_secret_value() if settings.slack_bot_token else None
    return AsyncWebClient(
        token=token,
        base_url=settings.slack_api_url,
        timeout=30,
        retry_handlers=[
            AsyncConnectionErrorRetryHandler(max_retry_count=2),
            AsyncRateLimitErrorRetryHandler(max_retry_count=3),
            AsyncServerErrorRetryHandler(max_retry_count=2),
        ],
    )


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
