"""A local stand-in for Microsoft Teams / Bot Framework: a connector that records what the bot
sends, OpenID metadata with a locally generated signing key, and tokens signed with it."""

from __future__ import annotations

import itertools
import json
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from aiohttp import web
from botframework.connector.auth import (
    Authentication,
    MicrosoftAppCredentials,
    PasswordServiceClientCredentialFactory,
)
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from tests.local_server import serve_locally

APP_ID = "00000000-0000-0000-0000-00000000a11d"
APP_PASSWORD = "test-password"
BOT_ID = f"28:{APP_ID}"
TENANT = "72f988bf-0000-0000-0000-0000000000aa"
OUTGOING_TOKEN = "token-the-bot-got-from-aad"
ISSUER = "https://api.botframework.com"


@dataclass
class Sent:
    path: str
    activity: dict[str, Any]
    authorization: str
    at: float = field(default_factory=time.monotonic)  # when it arrived (latency figures)
    response_id: str = ""  # the id the connector answered with


@dataclass
class FakeConnector:
    """Bot Framework's connector service (the activity's serviceUrl): records every activity sent."""

    sent: list[Sent] = field(default_factory=list)
    fail_typing: int = 0  # answer this many typing activities with 503
    # Answer stream updates with this status from the nth on (403 ContentStreamNotAllowed, 429).
    refuse_streams: tuple[int, int] | None = None  # (status, from which update, counting from 1)
    # Streaming rules a sent activity broke (answered 400, as Teams does); tests expect none.
    violations: list[str] = field(default_factory=list)
    url: str = ""
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _streams: dict[str, int] = field(default_factory=dict)  # open stream id -> last sequence
    _updates: int = 0

    async def activities(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("type") == "typing" and self.fail_typing:
            self.fail_typing -= 1
            return web.json_response({"error": {"code": "ServiceError", "message": "try later"}}, status=503)
        [info] = [e for e in body.get("entities") or [] if e.get("type") == "streaminfo"] or [None]
        if info is not None and body.get("type") == "typing" and self.refuse_streams:
            self._updates += 1
            status, start = self.refuse_streams
            if self._updates >= start:
                code = "ContentStreamNotAllowed" if status == 403 else "TooManyRequests"
                return web.json_response({"error": {"code": code, "message": "no"}}, status=status)
        new_id = f"1700000{next(self._ids):06d}"
        if info is not None and (broken := self._breaks(body, info, new_id)):
            self.violations.append(broken)
            return web.json_response({"error": {"code": "BadRequest", "message": broken}}, status=400)
        self.sent.append(
            Sent(request.path, body, request.headers.get("Authorization", ""), response_id=new_id)
        )
        return web.json_response({"id": new_id})

    def _breaks(self, body: dict[str, Any], info: dict[str, Any], new_id: str) -> str:  # noqa: PLR0911
        """What of Teams' streaming protocol ``body`` breaks ("" if nothing); tracks the streams."""
        kind, stream, sequence = info.get("streamType"), info.get("streamId"), info.get("streamSequence")
        if body["type"] == "message":
            if kind != "final" or stream not in self._streams or "streamSequence" in info:
                return f"a final message must end an open stream: {info}"
            del self._streams[stream]
            return ""
        if kind not in ("informative", "streaming") or not body.get("text"):
            return f"a stream update needs a type and text: {info}"
        if stream is None:
            if sequence != 1:
                return f"a stream starts at sequence 1: {info}"
            self._streams[new_id] = 1
            return ""
        if self._streams.get(stream) != (sequence or 0) - 1:
            return f"updates are numbered 1, 2, … one after the other: {info}"
        if kind == "informative" and any(
            e.get("streamType") == "streaming"
            for s in self.sent
            for e in s.activity.get("entities") or []
            if e.get("streamId") == stream
        ):
            return "informative updates come before the streamed text"
        self._streams[stream] = sequence
        return ""

    def messages(self) -> list[dict[str, Any]]:
        return [s.activity for s in self.sent if s.activity.get("type") == "message"]


def stream_info(activity: dict[str, Any]) -> dict[str, Any] | None:
    """The ``streaminfo`` entity of a sent activity, if it has one."""
    found = [e for e in activity.get("entities") or [] if e.get("type") == "streaminfo"]
    return found[0] if found else None


@asynccontextmanager
async def fake_connector() -> AsyncIterator[FakeConnector]:
    fake = FakeConnector()
    app = web.Application()
    app.router.add_post("/v3/conversations/{conversation}/activities", fake.activities)
    app.router.add_post("/v3/conversations/{conversation}/activities/{activity}", fake.activities)
    async with serve_locally(app) as url:
        fake.url = f"{url}/"
        yield fake


@dataclass
class SigningKeys:
    """An RSA key published as Bot Framework publishes its keys (with channel endorsements)."""

    key: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    kid: str = field(default_factory=lambda: uuid.uuid4().hex)
    metadata_url: str = ""

    def jwks(self) -> dict[str, Any]:
        jwk = json.loads(RSAAlgorithm.to_jwk(self.key.public_key()))
        return {"keys": [{**jwk, "kid": self.kid, "use": "sig", "endorsements": ["msteams", "emulator"]}]}

    def token(self, service_url: str, *, audience: str = APP_ID, lifetime_s: int = 3600) -> str:
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "aud": audience,
            "serviceurl": service_url,
            "nbf": now - 60,
            "exp": now + lifetime_s,
        }
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": self.kid})


@contextmanager
def openid_server(keys: SigningKeys) -> Iterator[SigningKeys]:
    """Serves the OpenID metadata from its own thread: botbuilder fetches it with blocking requests."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            base = f"http://127.0.0.1:{self.server.server_address[1]}"
            if self.path == "/.well-known/openidconfiguration":
                body = {
                    "issuer": ISSUER,
                    "jwks_uri": f"{base}/keys",
                    "id_token_signing_alg_values_supported": ["RS256"],
                }
            elif self.path == "/keys":
                body = keys.jwks()
            else:
                self.send_error(404)
                return
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *_args: object) -> None:
            pass

    class Server(ThreadingHTTPServer):
        def handle_error(self, request: Any, client_address: Any) -> None:
            # kbot stops a key fetch under way when it shuts down: a client gone is no error.
            if not isinstance(sys.exc_info()[1], ConnectionError):
                super().handle_error(request, client_address)

    server = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    keys.metadata_url = f"http://127.0.0.1:{server.server_address[1]}/.well-known/openidconfiguration"
    try:
        yield keys
    finally:
        server.shutdown()
        server.server_close()


class _LocalCredentials(MicrosoftAppCredentials):  # type: ignore[misc]
    def get_access_token(self, force_refresh: bool = False) -> str:
        return OUTGOING_TOKEN


class LocalCredentialFactory(PasswordServiceClientCredentialFactory):  # type: ignore[misc]
    """The real factory, except that the bot's own token comes from here instead of Azure AD."""

    async def create_credentials(
        self, app_id: str, oauth_scope: str, login_endpoint: str, validate_authority: bool
    ) -> Authentication:
        assert app_id == self.app_id
        return _LocalCredentials(self.app_id, self.password)


def activity(service_url: str, **fields: Any) -> dict[str, Any]:
    """An activity shaped as Teams sends it; a personal chat message unless ``fields`` say otherwise."""
    base: dict[str, Any] = {
        "type": "message",
        "id": f"1699999{uuid.uuid4().int % 10**6:06d}",
        "timestamp": "2026-11-22T08:00:00.000Z",
        "localTimestamp": "2026-11-22T16:00:00.000+08:00",
        "serviceUrl": service_url,
        "channelId": "msteams",
        "from": {"id": "29:1alice", "name": "Alice", "aadObjectId": "aad-alice"},
        "conversation": {"conversationType": "personal", "tenantId": TENANT, "id": "a:1alice-personal"},
        "recipient": {"id": BOT_ID, "name": "kbot"},
        "textFormat": "plain",
        "locale": "zh-TW",
        "entities": [{"type": "clientInfo", "locale": "zh-TW", "country": "TW", "platform": "Web"}],
        "channelData": {"tenant": {"id": TENANT}},
    }
    return {**base, **fields}


def channel_mention(service_url: str, text: str, *, root: str = "1700000000100") -> dict[str, Any]:
    channel = "19:hr-help@thread.tacv2"
    return activity(
        service_url,
        text=f"<at>kbot</at> {text}",
        conversation={
            "isGroup": True,
            "conversationType": "channel",
            "tenantId": TENANT,
            "id": f"{channel};messageid={root}",
        },
        entities=[{"type": "mention", "text": "<at>kbot</at>", "mentioned": {"id": BOT_ID, "name": "kbot"}}],
        channelData={
            "teamsChannelId": channel,
            "teamsTeamId": "19:team-hr@thread.tacv2",
            "channel": {"id": channel},
            "team": {"id": "19:team-hr@thread.tacv2"},
            "tenant": {"id": TENANT},
        },
    )
