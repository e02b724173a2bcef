"""A local stand-in for Slack, as slack-bolt's own tests use one: a Web API that records every call,
Socket Mode's WebSocket, and requests signed exactly as Slack signs them."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from tests.local_server import serve_locally

BOT_USER = "UBOT"
BOT_ID = "BBOT"
TEAM = "T0TEAM"
SECRET = "8f742231b10e8888abcd99yyyzzz85a5"


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    at: float = field(default_factory=time.monotonic)  # when it arrived (latency figures)
    ok: bool = False  # Slack accepted it


@dataclass
class FakeSlack:
    calls: list[Call] = field(default_factory=list)
    usergroups: dict[str, list[str]] = field(default_factory=dict)
    # method -> list of (status, headers) answered before the real response, one per call
    failures: dict[str, list[tuple[int, dict[str, str]]]] = field(default_factory=dict)
    # (channel, ts) -> reaction name -> users: what reactions.get reports, set by tests
    reactions: dict[tuple[str, str], dict[str, list[str]]] = field(default_factory=dict)
    # tokens answered {"ok": false, "error": "invalid_auth"}, as Slack answers revoked or mistyped ones
    revoked: set[str] = field(default_factory=set)
    delay_s: float = 0.0  # every call answers this late: a slow Slack
    # method -> the error Slack answers every call of it with ("method_deprecated", "not_allowed")
    refuse: dict[str, str] = field(default_factory=dict)
    url: str = ""
    socket_acks: list[dict[str, Any]] = field(default_factory=list)
    _sockets: list[web.WebSocketResponse] = field(default_factory=list)
    _ts: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def named(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    async def api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        if request.method == "GET":
            params = dict(request.query)
        elif request.content_type == "application/json":
            params = await request.json()
        else:  # form fields; slack_sdk sends some methods' arguments in the query string
            params = {**request.query, **(await request.post())}
        params = {k: _maybe_json(v) for k, v in params.items()}
        params["_token"] = request.headers.get("Authorization", "")
        call = Call(method, params)
        self.calls.append(call)
        await asyncio.sleep(self.delay_s)
        if params["_token"].removeprefix("Bearer ") in self.revoked:
            return web.json_response({"ok": False, "error": "invalid_auth"})
        if method in self.refuse:
            return web.json_response({"ok": False, "error": self.refuse[method]})
        if self.failures.get(method):
            status, headers = self.failures[method].pop(0)
            return web.json_response({"ok": False, "error": "ratelimited"}, status=status, headers=headers)
        response = self._respond(method, params)
        call.ok = bool(response["ok"])
        return web.json_response(response)

    def streamed(self, ts: str) -> str:
        """The markdown a natively streamed message shows: its start, appends and stop, in order."""
        parts = [
            c.params.get("markdown_text") or ""
            for c in self.calls
            if c.ok
            and (
                (c.method == "chat.startStream" and c.params.get("_ts") == ts)
                or (c.method in ("chat.appendStream", "chat.stopStream") and c.params.get("ts") == ts)
            )
        ]
        return "".join(parts)

    def _respond(self, method: str, params: dict[str, Any]) -> dict[str, Any]:  # noqa: PLR0911 - one per method
        if method == "chat.startStream":
            # As Slack: a reply in a thread, and outside a DM it must say whom it streams to.
            if not params.get("thread_ts"):
                return {"ok": False, "error": "invalid_arguments"}
            if not params["channel"].startswith("D") and not (
                params.get("recipient_user_id") and params.get("recipient_team_id")
            ):
                return {"ok": False, "error": "missing_recipient_user_id"}
            if len(params.get("markdown_text") or "") > 12_000:
                return {"ok": False, "error": "msg_too_long"}
            params["_ts"] = f"1700000{next(self._ts):03d}.000300"
            return {"ok": True, "channel": params["channel"], "ts": params["_ts"]}
        if method in ("chat.appendStream", "chat.stopStream"):
            if len(params.get("markdown_text") or "") > 12_000:
                return {"ok": False, "error": "msg_too_long"}
            stopped = {c.params.get("ts") for c in self.calls if c.method == "chat.stopStream" and c.ok}
            if params.get("ts") in stopped:
                return {"ok": False, "error": "message_not_in_streaming_state"}
            return {"ok": True, "channel": params["channel"], "ts": params["ts"]}
        if method == "chat.postMessage":
            params["_ts"] = f"1700000{next(self._ts):03d}.000100"  # recorded with the call, for tests
            return {"ok": True, "channel": params["channel"], "ts": params["_ts"]}
        if method == "reactions.get":
            found = self.reactions.get((params["channel"], params["timestamp"]), {})
            reactions = [{"name": n, "users": u, "count": len(u)} for n, u in found.items() if u]
            return {
                "ok": True,
                "type": "message",
                "message": {"ts": params["timestamp"], "reactions": reactions},
            }
        fixed: dict[str, dict[str, Any]] = {
            "auth.test": {
                "team_id": TEAM,
                "user_id": BOT_USER,
                "bot_id": BOT_ID,
                "team": "Acme",
                "user": "kbot",
            },
            "chat.postEphemeral": {"message_ts": f"1700000{next(self._ts):03d}.000200"},
            "usergroups.users.list": {"users": self.usergroups.get(params.get("usergroup", ""), [])},
            "apps.connections.open": {"url": self.url.replace("http", "ws", 1) + "/link"},
        }
        return {"ok": True, **fixed.get(method, {})}

    async def link(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self._sockets.append(ws)
        await ws.send_str(json.dumps({"type": "hello", "num_connections": 1}))
        async for message in ws:
            if message.type == WSMsgType.TEXT:
                self.socket_acks.append(json.loads(message.data))
        return ws

    async def push(self, payload: dict[str, Any], kind: str = "events_api") -> str:
        """Deliver a payload over Socket Mode; returns the envelope id Slack expects acked."""
        envelope_id = f"env-{next(self._ts)}"
        envelope = {
            "envelope_id": envelope_id,
            "type": kind,
            "payload": payload,
            "accepts_response_payload": False,
        }
        await self._sockets[-1].send_str(json.dumps(envelope))
        return envelope_id

    @property
    def connected(self) -> bool:
        return bool(self._sockets) and not self._sockets[-1].closed


def _maybe_json(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


@asynccontextmanager
async def fake_slack_server(**kwargs: Any) -> AsyncIterator[FakeSlack]:
    fake = FakeSlack(**kwargs)
    app = web.Application()
    app.router.add_route("*", "/api/{method}", fake.api)
    app.router.add_get("/link", fake.link)
    async with serve_locally(app) as url:
        fake.url = url
        try:
            yield fake
        finally:
            for ws in fake._sockets:
                await ws.close()


def sign(body: str, *, secret: str = SECRET, timestamp: int | None = None) -> dict[str, str]:
    """Headers exactly as Slack sends them: v0=HMAC-SHA256(secret, "v0:{timestamp}:{body}")."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    digest = hmac.new(secret.encode(), f"v0:{ts}:{body}".encode(), hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": f"v0={digest}"}


def event_body(event: dict[str, Any], event_id: str) -> str:
    return json.dumps(
        {
            "token": "legacy",
            "team_id": TEAM,
            "api_app_id": "A0KBOT",
            "event": event,
            "type": "event_callback",
            "event_id": event_id,
            "event_time": int(time.time()),
            "authorizations": [{"team_id": TEAM, "user_id": BOT_USER, "is_bot": True}],
        }
    )


def interaction_body(payload: dict[str, Any]) -> str:
    """Interactivity arrives form-encoded: payload=<json>."""
    return urllib.parse.urlencode({"payload": json.dumps(payload)})


async def wait_until(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the condition")
        await asyncio.sleep(0.02)


def main(port: int) -> None:
    """Serve the fake Web API in its own process (benchmarks), with GET /_calls for counts per method."""
    fake = FakeSlack(url=f"http://127.0.0.1:{port}")

    async def counts(_request: web.Request) -> web.Response:
        tally: dict[str, int] = {}
        for call in fake.calls:
            tally[call.method] = tally.get(call.method, 0) + 1
        return web.json_response(tally)

    app = web.Application()
    app.router.add_route("*", "/api/{method}", fake.api)
    app.router.add_get("/_calls", counts)
    web.run_app(app, host="127.0.0.1", port=port, print=None)


if __name__ == "__main__":
    import sys

    main(int(sys.argv[1]))
