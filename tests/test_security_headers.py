"""Every response carries the security headers: pages under any path, static files, errors, streams."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from aiohttp import ClientResponse

from bot.web.routes import CSP
from knowledge.embeddings import Embedder
from tests.slack_env import SlackEnv, slack_env


@pytest.fixture(scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory, embedder: Embedder) -> AsyncIterator[SlackEnv]:
    async with slack_env(tmp_path_factory.mktemp("headers"), embedder) as env:
        yield env


def assert_guarded(response: ClientResponse) -> None:
    assert response.headers.get("Content-Security-Policy") == CSP, response.url
    assert "frame-ancestors 'none'" in CSP
    assert response.headers.get("X-Content-Type-Options") == "nosniff", response.url
    assert response.headers.get("X-Frame-Options") == "DENY", response.url


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/", 200),
        ("/dashboard", 200),
        ("/static/index.html", 200),  # the same page under its file name: no framing there either
        ("/static/dashboard.html", 200),
        ("/static/chat.js", 200),
        ("/static/nothing-here.js", 404),
        ("/api/dashboard", 401),
        ("/healthz", 200),
        ("/no/such/route", 404),
    ],
)
async def test_get_responses_carry_the_headers(env: SlackEnv, path: str, status: int) -> None:
    response = await env.client.get(path)
    assert response.status == status
    assert_guarded(response)


async def test_errors_and_event_streams_carry_the_headers(env: SlackEnv) -> None:
    refused = await env.client.post("/api/chat", data="x", headers={"Content-Type": "text/plain"})
    assert refused.status == 415
    assert_guarded(refused)
    body = {"id": uuid.uuid4().hex, "conversation": uuid.uuid4().hex, "text": "How many days of sick leave?"}
    stream = await env.client.post("/api/chat", json=body)
    assert stream.headers["Content-Type"].startswith("text/event-stream")
    assert_guarded(stream)
    assert "event: end" in await stream.text()
