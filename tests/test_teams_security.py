"""The Teams endpoint against an outside attacker: a web page the admin happens to visit, the
unauthenticated Emulator endpoint, and a Bot Framework key endpoint that never answers.

What is attacked is what was open: ``/api/messages`` on a loopback address accepted any activity
(a page can post ``text/plain; x=application/json`` cross-origin without a preflight), trusted the
activity's AAD id for ACL groups and sent the answer, restricted text included, to whatever
``serviceUrl`` it named; and botbuilder fetched the signing keys with a blocking request on the
event loop, so a hanging key endpoint stalled every Slack ack.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import signal
import socket
import statistics
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from sqlalchemy import select

from kbot.db.models import Answer
from kbot.errors import ChatError, ConfigError
from kbot.settings import Settings
from knowledge.embeddings import Embedder
from tests.fake_openai import fake_openai_server
from tests.fake_slack import wait_until
from tests.fake_teams import (
    APP_ID,
    APP_PASSWORD,
    TENANT,
    LocalCredentialFactory,
    SigningKeys,
    activity,
    fake_connector,
)
from tests.kbot_process import free_port
from tests.local_server import serve_locally
from tests.slack_env import SlackEnv, message, slack_env
from tests.test_teams import QUESTION, teams_env

JSON = {"Content-Type": "application/json"}
CANARY = f"CANARY-HR-bonus-{secrets.token_hex(8)}"
BONUS_DOC = f"# Executive bonus pool\n\nThe executive bonus pool for 2026 is {CANARY} euros, paid in March.\n"
BONUS_QUESTION = "How large is the executive bonus pool for 2026?"


@dataclass
class Recorder:
    """A serviceUrl that counts every request it gets (and answers like a connector)."""

    hits: list[str] = field(default_factory=list)
    bodies: list[str] = field(default_factory=list)
    url: str = ""

    async def any(self, request: web.Request) -> web.Response:
        self.hits.append(f"{request.method} {request.path}")
        self.bodies.append(await request.text())
        return web.json_response({"id": f"1700000{len(self.hits):06d}"})


@asynccontextmanager
async def recorder() -> AsyncIterator[Recorder]:
    found = Recorder()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", found.any)
    async with serve_locally(app) as url:
        found.url = f"{url}/"
        yield found


async def _answers(env: SlackEnv) -> list[Answer]:
    async with env.runtime.service.ledger._db.session() as session:
        return list((await session.scalars(select(Answer))).all())


async def test_a_web_page_cannot_post_activities(tmp_path: Path, embedder: Embedder) -> None:
    async with recorder() as attacker, slack_env(tmp_path, embedder, teams_emulator=True) as env:
        body = json.dumps(activity(attacker.url, text=QUESTION, channelId="emulator"))
        page = {"Origin": "https://attacker.example", "Sec-Fetch-Site": "cross-site"}
        refused = {
            # What a page sends cross-origin without a preflight: a "simple" content type.
            "text/plain with application/json in a parameter": (
                {"Content-Type": "text/plain; x=application/json"},
                415,
            ),
            "text/plain": ({"Content-Type": "text/plain"}, 415),
            "a form": ({"Content-Type": "application/x-www-form-urlencoded"}, 415),
            "multipart, application/json as its boundary": (
                {"Content-Type": "multipart/form-data; boundary=application/json"},
                415,
            ),
            # Whatever the content type: a browser says where a request came from.
            "an Origin header": ({**JSON, "Origin": "https://attacker.example"}, 403),
            "Origin null (a sandboxed frame)": ({**JSON, "Origin": "null"}, 403),
            "Sec-Fetch-Site: cross-site": ({**JSON, "Sec-Fetch-Site": "cross-site"}, 403),
            "the page's own request": ({"Content-Type": "text/plain; x=application/json", **page}, 403),
        }
        for case, (headers, status) in refused.items():
            response = await env.client.post("/api/messages", data=body, headers=headers)
            assert response.status == status, case
        await asyncio.sleep(0.3)
        await env.runtime.service.drain(5)
        assert attacker.hits == [] and not env.stats and env.model.requests == []
        # The same activity as the Emulator sends it is answered at that serviceUrl: had any
        # request above got through, the recorder would have seen it.
        assert (await env.client.post("/api/messages", data=body, headers=JSON)).status in (200, 201)
        await wait_until(lambda: env.stats["answered"] == 1)
        assert attacker.hits


async def test_kbot_serve_has_no_open_teams_unless_the_emulator_is_opted_in(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`kbot serve` on a loopback address without KBOT_TEAMS_EMULATOR: no /api/messages (it used to
    be open there); the log says how to turn Teams on. The opt-in is refused off loopback."""
    from bot.server import serve

    async with fake_openai_server() as model:
        base: dict[str, Any] = {
            "data_dir": tmp_path / "data",
            "model_backend": "openai",
            "model_url": model.url,
            "base_model": "served-base",
        }
        loop = asyncio.get_running_loop()
        refused = {
            "loopback": (Settings(**base, teams_emulator=True), "0.0.0.0"),
            "set one of them": (
                Settings(**base, teams_emulator=True, teams_app_id=APP_ID, teams_app_password="x"),
                "127.0.0.1",
            ),
        }
        for reason, (settings, host) in refused.items():
            started = asyncio.create_task(serve(settings, host=host, port=free_port()))
            try:
                # Refused before anything loads; a server that started anyway fails the test.
                with pytest.raises(ConfigError, match=reason):
                    await asyncio.wait_for(asyncio.shield(started), 30)
            finally:
                await _stop(started, loop)

        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = asyncio.create_task(serve(Settings(**base), host="127.0.0.1", port=port))
        try:
            async with aiohttp.ClientSession() as http:
                health = await _healthy(http, url, server)
                assert health["teams"] == "off"
                body = activity("http://127.0.0.1:9/", text=QUESTION, channelId="emulator")
                async with http.post(url + "/api/messages", json=body) as response:
                    assert response.status == 404
        finally:
            await _stop(server, loop)
    assert "Teams is off" in caplog.text and "KBOT_TEAMS_EMULATOR=true" in caplog.text


async def _stop(server: asyncio.Task[None], loop: asyncio.AbstractEventLoop) -> None:
    server.cancel()
    with contextlib.suppress(asyncio.CancelledError, ConfigError):
        await server
    for sig in (signal.SIGINT, signal.SIGTERM):  # serve's own, for a server that is gone
        loop.remove_signal_handler(sig)


async def _healthy(http: aiohttp.ClientSession, url: str, server: asyncio.Task[None]) -> dict[str, Any]:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.done():
            server.result()  # raises what stopped it
            raise AssertionError("kbot serve stopped")
        try:
            async with http.get(url + "/healthz") as response:
                return dict(await response.json())
        except aiohttp.ClientError:
            await asyncio.sleep(0.3)
    raise AssertionError("kbot serve did not come up")


async def test_the_emulator_mode_answers_only_with_the_opt_in(tmp_path: Path, embedder: Embedder) -> None:
    async with fake_connector() as connector, slack_env(tmp_path, embedder, teams_emulator=True) as env:
        body = activity(connector.url, text=QUESTION, channelId="emulator")
        response = await env.client.post("/api/messages", data=json.dumps(body), headers=JSON)
        assert response.status in (200, 201)
        await wait_until(lambda: env.stats["answered"] == 1)
        assert connector.messages()[0]["text"].startswith("Sick leave is 10 days")
        [row] = await _answers(env)
        assert row.asker == "emulator:aad-alice"  # never the AAD id of a real Teams user


async def test_an_emulator_asker_gets_no_acl_group(tmp_path: Path, embedder: Embedder) -> None:
    """An AAD id that KBOT_GROUPS lists as hr (and every Teams user, and the tenant) gets no hr
    document through the unauthenticated endpoint; an hr member in a Slack DM does."""
    groups = {
        "teams:aad-helen": ["hr"],
        "teams:*": ["hr"],
        f"teams:{TENANT}": ["hr"],
        "slack:S0HR": ["hr"],
    }
    async with (
        fake_connector() as connector,
        slack_env(tmp_path, embedder, teams_emulator=True, groups=groups) as env,
    ):
        restricted = tmp_path / "restricted-bonus"
        restricted.mkdir()
        (restricted / "bonus-pool.md").write_text(BONUS_DOC)
        await env.runtime.service.answerer.kb.ingest([str(restricted)], "handbook", acl=["hr"])
        helen = {"id": "29:1helen", "name": "Helen", "aadObjectId": "aad-helen"}
        as_helen = activity(
            connector.url,
            text=BONUS_QUESTION,
            channelId="emulator",
            conversation={"conversationType": "personal", "tenantId": TENANT, "id": "a:1helen"},
            **{"from": helen},
        )
        response = await env.client.post("/api/messages", data=json.dumps(as_helen), headers=JSON)
        assert response.status in (200, 201)
        await wait_until(lambda: env.stats["answered"] == 1)
        # The control: the document is what this question finds, for someone in hr.
        await env.event(message(BONUS_QUESTION, user="UHR", channel="D1", channel_type="im"))
        await wait_until(lambda: env.stats["answered"] == 2)
        rows = {row.platform: row for row in await _answers(env)}
        slack_row, teams_row = rows["slack"], rows["teams"]
        assert any(r["source"].endswith("bonus-pool.md") for r in slack_row.retrieved)
        assert CANARY in json.dumps(slack_row.messages)  # the model saw it: the canary is looked for right
        assert teams_row.asker == "emulator:aad-helen"
        assert CANARY not in json.dumps([teams_row.retrieved, teams_row.messages, teams_row.answer])
        assert not any(r["source"].endswith("bonus-pool.md") for r in teams_row.retrieved)
        assert connector.messages() and CANARY not in json.dumps([s.activity for s in connector.sent])


async def test_the_emulator_mode_replies_to_this_machine_only(tmp_path: Path, embedder: Embedder) -> None:
    async with recorder() as local, slack_env(tmp_path, embedder, teams_emulator=True) as env:
        elsewhere = [
            "https://smba.trafficmanager.net/emea/",
            "http://10.0.0.7:3978/",
            "http://169.254.169.254/latest/",
            "http://127.0.0.1.attacker.example/",
            "http://localhost.attacker.example/",
            "http://127.0.0.1@attacker.example/",
            "http://attacker.example\\@127.0.0.1/",
            "http://attacker.example#@127.0.0.1/",
            "http://[::1",
            "ftp://127.0.0.1/",
        ]
        for service_url in elsewhere:
            body = activity(service_url, text=QUESTION, channelId="emulator")
            response = await env.client.post("/api/messages", data=json.dumps(body), headers=JSON)
            assert response.status in (400, 403), service_url
        await asyncio.sleep(0.3)
        await env.runtime.service.drain(5)
        assert not env.stats and env.model.requests == [] and await _answers(env) == []
        # A loopback serviceUrl (the Emulator's) is answered.
        body = activity(local.url, text=QUESTION, channelId="emulator")
        response = await env.client.post("/api/messages", data=json.dumps(body), headers=JSON)
        assert response.status in (200, 201)
        await wait_until(lambda: env.stats["answered"] == 1)
        assert local.hits


def test_what_counts_as_a_loopback_service_url() -> None:
    from bot.teams.guard import is_loopback_url

    for url in ("http://127.0.0.1:3978/", "http://localhost:3978", "http://[::1]:3978/", "https://127.0.0.5"):
        assert is_loopback_url(url), url
    for url in ("http://127.0.0.1 @x.example/", "http://[::1", "http://0.0.0.0/", "http://[::]/", ""):
        assert not is_loopback_url(url), url


async def test_healthz_says_whether_teams_is_on_never_how(tmp_path: Path, embedder: Embedder) -> None:
    async with slack_env(tmp_path, embedder, teams_emulator=True) as env:
        response = await env.client.get("/healthz")
        text = await response.text()
        assert json.loads(text)["teams"] == "on" and "open" not in text
    async with teams_env(tmp_path / "authenticated", embedder) as teams:
        text = await (await teams.env.client.get("/healthz")).text()
        assert json.loads(text)["teams"] == "on" and "authenticated" not in text


# --- a key endpoint that hangs --------------------------------------------------------------------


@dataclass
class Hanging:
    url: str
    reached: threading.Event
    connections: int = 0


@contextmanager
def hanging_key_endpoint(release_after_s: float = 4.0) -> Iterator[Hanging]:
    """OpenID metadata at a server that accepts connections and never answers. After
    ``release_after_s`` it resets them: a client blocking its event loop on it (botbuilder's own
    fetch) then fails this test instead of hanging it."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    port = listener.getsockname()[1]
    found = Hanging(f"http://127.0.0.1:{port}/.well-known/openidconfiguration", threading.Event())
    held: list[socket.socket] = []
    lock = threading.Lock()
    closed = threading.Event()

    def accept() -> None:
        while not closed.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with lock:
                held.append(conn)
                found.connections += 1
            found.reached.set()

    def close() -> None:
        closed.set()
        with lock:
            for conn in held:
                conn.close()
        listener.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    timer = threading.Timer(release_after_s, close)
    timer.start()
    try:
        yield found
    finally:
        timer.cancel()
        close()
        thread.join(5)


async def test_slack_acks_stay_fast_while_a_key_fetch_hangs(tmp_path: Path, embedder: Embedder) -> None:
    """A forged Bearer token while Bot Framework's key endpoint hangs: the Teams request gets 503
    after a short wait, and Slack events are acked meanwhile (the loop is free)."""
    from botframework.connector.auth import ChannelValidation

    previous = ChannelValidation.open_id_metadata_endpoint
    with hanging_key_endpoint() as endpoint:
        ChannelValidation.open_id_metadata_endpoint = endpoint.url
        try:
            async with (
                fake_connector() as connector,
                slack_env(
                    tmp_path,
                    embedder,
                    teams_app_id=APP_ID,
                    teams_app_password=APP_PASSWORD,
                    teams_credentials=LocalCredentialFactory(APP_ID, APP_PASSWORD),
                ) as env,
            ):
                forged = SigningKeys().token(connector.url)
                headers = {**JSON, "Authorization": f"Bearer {forged}"}
                body = json.dumps(activity(connector.url, text=QUESTION))
                started = time.perf_counter()
                teams = asyncio.create_task(env.client.post("/api/messages", data=body, headers=headers))
                acks: list[float] = []
                while not teams.done():
                    sent = time.perf_counter()
                    # Signed, and cheap to handle: kbot is switched off in COFF.
                    response = await env.event(message("hello", channel="COFF"))
                    acks.append(time.perf_counter() - sent)
                    assert response.status == 200
                    await asyncio.sleep(0.02)
                teams_status, teams_s = (await teams).status, time.perf_counter() - started
                assert endpoint.reached.is_set()  # the key fetch was under way all along
                await wait_until(lambda: env.stats["ignored"] == len(acks))
        finally:
            ChannelValidation.open_id_metadata_endpoint = previous
    shown = ", ".join(f"{a * 1000:.0f}" for a in sorted(acks)[-5:])
    median = statistics.median(acks)
    print(f"\n{len(acks)} Slack acks while the key fetch hung: median {median * 1000:.1f} ms")
    print(f"slowest: {shown} ms; Teams answered {teams_status} after {teams_s:.2f} s")
    assert teams_status == 503  # no keys known: refused, not left waiting on the fetch
    assert len(acks) >= 5, f"the loop was blocked: {len(acks)} acks, slowest {max(acks):.2f} s"
    assert median < 0.1, f"acks: {shown} ms"


async def test_a_failing_key_endpoint_is_asked_rarely_and_good_keys_stay(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from bot.teams import keys

    monkeypatch.setattr(keys, "FIRST_BACKOFF_S", 0.3)
    signing = SigningKeys()
    state = {"fail": True, "hits": 0}

    async def metadata(request: web.Request) -> web.Response:
        state["hits"] += 1
        if state["fail"]:
            return web.Response(status=500)
        return web.json_response({"jwks_uri": str(request.url.with_path("/keys"))})

    async def jwks(_request: web.Request) -> web.Response:
        return web.json_response(signing.jwks())

    app = web.Application()
    app.router.add_get("/.well-known/openidconfiguration", metadata)
    app.router.add_get("/keys", jwks)
    async with serve_locally(app) as url:
        holder = keys.LoopFreeKeys(f"{url}/.well-known/openidconfiguration")
        for _ in range(5):
            with pytest.raises(ChatError):
                await holder.get(signing.kid)
        assert state["hits"] == 1  # one failed fetch, then a back-off: not one per request
        await asyncio.sleep(0.35)
        state["fail"] = False
        found = await holder.get(signing.kid)
        assert found is not None and found.endorsements == ["msteams", "emulator"]
        assert state["hits"] == 2
        assert await holder.get("some-other-kid") is None  # unknown: botbuilder refuses it (401)
        assert state["hits"] == 2  # an unknown key id refreshes at most hourly

        # The keys are a day old and the endpoint fails again: the last good keys keep serving.
        monkeypatch.setattr(keys, "MAX_AGE_S", 0.0)
        state["fail"] = True
        assert await holder.get(signing.kid) is not None
        await wait_until(lambda: state["hits"] == 3)  # the refresh get() started in the background
        assert await holder.get(signing.kid) is not None
        assert state["hits"] == 3  # backing off again


async def test_invokes_kbot_does_not_offer_are_not_errors(tmp_path: Path, embedder: Embedder) -> None:
    """Message extensions, cards, other dialogs (kbot's one is the feedback dialog, test_teams):
    acknowledged (200) with nothing; a card action without a value was a 500, the others
    botbuilder's 501."""
    invokes: list[tuple[str | None, Any]] = [
        ("composeExtension/query", {"commandId": "search", "parameters": [{"name": "q", "value": "x"}]}),
        ("adaptiveCard/action", {"action": {"type": "Action.Execute", "verb": "x", "data": {}}}),
        ("adaptiveCard/action", None),
        ("task/fetch", {"data": {}}),
        ("signin/verifyState", {"state": "1"}),
        (None, {}),
    ]
    async with teams_env(tmp_path, embedder) as teams:
        for name, value in invokes:
            body = teams.activity(type="invoke", name=name, value=value, replyToId="1700000000001")
            response = await teams.post(body)
            assert response.status == 200, (name, value, response.status, await response.text())
        assert teams.stats["failed"] == 0 and teams.connector.messages() == []
