"""``kbot serve``: one aiohttp server for every chat platform.

Routes: ``GET /healthz`` (liveness); ``GET /readyz`` (the SQL store, vector store and model,
:mod:`bot.readiness`); ``GET /metrics`` (Prometheus); ``POST /slack/events`` (Events API and
interactivity) when Slack is configured; ``POST /api/messages`` (Teams, Bot Framework); the web
UI (``/``, ``/dashboard``, ``/api/…``, see :mod:`bot.web`). Socket Mode replaces the Slack route
with an outbound WebSocket for workspaces that cannot expose a URL. Every request gets an id
(``X-Request-Id``, kept when the caller sent a sane one) that its log lines carry.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import re
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.typedefs import Handler
from botframework.connector.auth import ServiceClientCredentialsFactory
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request

from agent.answering import Answerer
from bot import metrics, sources
from bot.chat import ChatService
from bot.ledger import ChatLedger
from bot.readiness import Readiness
from bot.slack import payload as slack_payload
from bot.slack.app import SlackAdapter
from bot.spool import FeedbackSpool
from bot.teams.app import TeamsAdapter
from bot.teams.guard import check_teams_mode
from bot.web.auth import AdminAuth
from bot.web.routes import WebUI
from finetune.votes import VoteLog
from kbot.errors import ConfigError, KbotError
from kbot.logs import request_id
from kbot.settings import Settings
from knowledge.base import KnowledgeBase
from knowledge.vectorstore.shared import ShardHost

log = logging.getLogger(__name__)
HOUSEKEEPING_EVERY_S = 3600.0
SPOOL_RETRY_S = 2.0  # how soon feedback kept during a database outage is written once it is back
DRAIN_S = 30.0
SLACK_KEY = web.AppKey("slack", SlackAdapter)
SERVICE_KEY = web.AppKey("service", ChatService)
TEAMS_KEY = web.AppKey("teams", TeamsAdapter)
READY_KEY = web.AppKey("readiness", Readiness)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


@dataclass
class Runtime:
    """Everything a running server holds; built by :func:`open_runtime`."""

    settings: Settings
    service: ChatService
    slack: SlackAdapter | None
    teams: TeamsAdapter | None
    admin: AdminAuth


@asynccontextmanager
async def open_runtime(
    settings: Settings,
    *,
    kb: KnowledgeBase | None = None,
    answerer: Answerer | None = None,
    teams_credentials: ServiceClientCredentialsFactory | None = None,
) -> AsyncIterator[Runtime]:
    """Open the knowledge base, the model and the platform adapters; close them all on exit.

    ``kb`` and ``answerer`` passed in stay the caller's to close. ``teams_credentials`` replaces
    how the bot gets its own Azure AD token (default: from the app id and password). Teams is on
    with a Teams app id, or, unauthenticated, with ``teams_emulator`` (``kbot serve`` refuses that
    on an address other than loopback: :func:`bot.teams.guard.check_teams_mode`).
    """
    async with AsyncExitStack() as stack:
        if answerer is None:
            if kb is None:
                kb = await KnowledgeBase.open(settings, owner=True)
                stack.push_async_callback(kb.close)
            answerer = await Answerer.open(settings, kb=kb)
            stack.push_async_callback(answerer.close)
            # Loading inside the first request would stall the event loop, and every ack with it.
            await answerer.warm_up()
        # The loaded models are millions of long-lived objects; a full collection walking them
        # all stalls the event loop for hundreds of ms. Frozen, the collector skips them.
        gc.collect()
        gc.freeze()
        db = answerer.kb.db
        await _check_channel_collections(settings, answerer.kb)
        spool = FeedbackSpool(settings.data_dir / "spool")
        stack.callback(spool.close)
        service = ChatService(settings, answerer, ChatLedger(db), VoteLog(db), spool)
        stack.push_async_callback(service.drain, DRAIN_S)
        try:
            await service.review.restore_verified()
        except KbotError as exc:  # answering goes on from the documents; a restart tries again
            log.error("approved corrections could not be indexed again as verified answers: %s", exc)
        slack = SlackAdapter(settings, service) if settings.slack_enabled else None
        if slack is not None:
            await slack.warm_up()
        teams = None
        if settings.teams_app_id or settings.teams_emulator:
            teams = TeamsAdapter(settings, service, credentials_factory=teams_credentials)
            stack.push_async_callback(teams.close)
            await teams.warm_up()
        yield Runtime(settings, service, slack, teams, AdminAuth(settings))


async def _check_channel_collections(settings: Settings, kb: KnowledgeBase) -> None:
    """Say at start, not at the first question, when a channel names a collection that does not exist."""
    known = set(await kb.catalog.collection_names())
    for key, policy in settings.channels.items():
        for name in policy.collections:
            if name not in known:
                log.warning(
                    "channel %s names collection %r, which does not exist (known: %s)",
                    key,
                    name,
                    ", ".join(sorted(known)) or "none",
                )


def build_app(runtime: Runtime) -> web.Application:
    app = web.Application(client_max_size=1024**2, middlewares=[_observe])
    app[SERVICE_KEY] = runtime.service
    app.router.add_get("/healthz", _healthz)
    app[READY_KEY] = Readiness(runtime.service.answerer)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    WebUI(runtime.settings, runtime.service, runtime.admin).mount(app)
    if runtime.slack is not None:
        app[SLACK_KEY] = runtime.slack
        app.router.add_post("/slack/events", _slack_events)
    if runtime.teams is not None:
        app[TEAMS_KEY] = runtime.teams
        app.router.add_post("/api/messages", runtime.teams.handle)
    app.cleanup_ctx.append(_housekeeping)
    app.cleanup_ctx.append(_flush_feedback)
    app.cleanup_ctx.append(_answer_orphans)
    return app


class AccessLog(AbstractAccessLogger):
    """Access lines without query strings or headers: ``/login?token=…`` carries the admin token."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            '%s "%s %s" %d %.3f s', request.remote, request.method, request.path, response.status, time
        )


async def _healthz(request: web.Request) -> web.Response:
    # Anyone may ask: whether Teams is on, never how it authenticates (an open endpoint invites).
    teams = "on" if TEAMS_KEY in request.app else "off"
    return web.json_response({"status": "ok", "slack": SLACK_KEY in request.app, "teams": teams})


async def _readyz(request: web.Request) -> web.Response:
    checks = await request.app[READY_KEY].check()
    down = [name for name, state in checks.items() if state != "ok"]
    if down:
        return web.json_response({"status": "not ready", "down": down, "checks": checks}, status=503)
    return web.json_response({"status": "ready", "checks": checks})


@web.middleware
async def _observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request id for the logs (and the caller), request counts and times for /metrics."""
    given = request.headers.get("X-Request-Id", "")
    rid = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
    request_id.set(rid)  # this handler's context, and every task it starts
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
    except web.HTTPException as exc:
        status = exc.status
        exc.headers["X-Request-Id"] = rid
        raise
    except KbotError as exc:
        # A failing store or model must not surface as a bare 500: say what, log the details.
        log.error("%s %s failed: %s", request.method, request.path, exc)
        metrics.ERRORS.labels(type(exc).__name__).inc()
        status = 503
        return web.json_response(
            {"error": "A component kbot needs is not available right now; please try again later."},
            status=503,
            headers={"X-Request-Id": rid},
        )
    finally:
        metrics.HTTP_REQUESTS.labels(route, request.method, str(status)).inc()
        metrics.HTTP_SECONDS.labels(route).observe(time.perf_counter() - started)
    if not response.prepared:
        response.headers["X-Request-Id"] = rid
    return response


async def _metrics(request: web.Request) -> web.Response:
    active = await request.app[SERVICE_KEY].answerer.adapters.active()
    metrics.set_active_adapter(active.version if active else None)
    return web.Response(body=metrics.exposition(), headers={"Content-Type": metrics.CONTENT_TYPE})


async def _slack_events(request: web.Request) -> web.StreamResponse:
    adapter = request.app[SLACK_KEY]
    try:
        bolt_request = await to_bolt_request(request)
    except web.HTTPException:
        raise  # the body is over client_max_size: 413
    except Exception as exc:
        # Bolt parses the body, and reads its fields, before verifying it, and fails in any way on
        # garbage (not UTF-8, not JSON, nested too deep, a string where it reads an object's
        # fields): the sender's fault either way.
        detail = exc if isinstance(exc, ValueError) else "it is not a Slack payload"
        raise web.HTTPBadRequest(text=f"malformed Slack request: {detail}") from exc
    timestamp = request.headers.get("X-Slack-Request-Timestamp", "")
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12):
        # Bolt's signature check does int() on it and fails with a 500 on anything else.
        log.info("refused a Slack request without a valid timestamp")
        return web.json_response({"error": "invalid request"}, status=401)
    if (problem := slack_payload.problem(bolt_request.body)) is not None:
        raise web.HTTPBadRequest(text=f"malformed Slack request: {problem}")
    bolt_response = await adapter.app.async_dispatch(bolt_request)
    if bolt_response.status == 401:
        # Bolt's own line for this carries the whole unauthenticated body, so it is kept quiet
        # (kbot.logs.PAYLOAD_LOGGERS); this one says what happened without it.
        log.info("refused a Slack request with a bad signature or an expired timestamp")
    return await to_aiohttp_response(bolt_response)


@asynccontextmanager
async def _every(seconds: float, what: str, job: Callable[[], Awaitable[object]]) -> AsyncIterator[None]:
    """Run ``job`` now and then every ``seconds`` while the app runs; a failure is logged, not fatal."""

    async def loop() -> None:
        while True:
            try:
                await job()
            except Exception:  # a background loop's top: the next round tries again
                log.exception("%s failed; will try again", what)
            await asyncio.sleep(seconds)

    task = asyncio.create_task(loop(), name=what)
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _housekeeping(app: web.Application) -> AsyncIterator[None]:
    async with _every(HOUSEKEEPING_EVERY_S, "housekeeping", app[SERVICE_KEY].housekeeping):
        yield


async def _answer_orphans(app: web.Application) -> AsyncIterator[None]:
    """Questions whose server died mid-answer (a lease that ran out): answered here, once."""
    service = app[SERVICE_KEY]
    async with _every(service.settings.claim_lease_s, "answering orphaned questions", service.sweep):
        yield


async def _flush_feedback(app: web.Application) -> AsyncIterator[None]:
    """Write feedback kept on disk during a database outage (and any left by the last run)."""
    service = app[SERVICE_KEY]
    async with _every(SPOOL_RETRY_S, "writing waiting feedback", service.flush_feedback):
        yield
    # One last try on the way out; whatever still waits stays on disk for the next start.
    with contextlib.suppress(KbotError):
        await service.flush_feedback()


def parse_time_of_day(at: str) -> tuple[int, int]:
    hour, _, minute = at.partition(":")
    if not (hour.isdigit() and minute.isdigit() and int(hour) < 24 and int(minute) < 60):
        raise ConfigError(f"--nightly takes a time of day like 02:00, not {at!r}.")
    return int(hour), int(minute)


def schedule_nightly(runtime: Runtime, at: str) -> Any:
    """Run the nightly learning job every day at ``at`` (HH:MM, server time) inside this server."""
    from apscheduler.schedulers.asyncio import AsyncIOScheduler
    from apscheduler.triggers.cron import CronTrigger

    from finetune.nightly import NightlyConfig, run_nightly

    hour, minute = parse_time_of_day(at)
    answerer = runtime.service.answerer

    async def job() -> None:
        try:
            embedder = answerer.kb.embedder
            run = await run_nightly(
                runtime.settings, answerer, NightlyConfig(), embed=embedder.embed, embed_model=embedder.name
            )
            log.info("nightly run %s: %s — %s", run.id, run.status, run.decision)
        except Exception:
            log.exception("nightly run failed")

    scheduler = AsyncIOScheduler()
    scheduler.add_job(job, CronTrigger(hour=hour, minute=minute), max_instances=1, coalesce=True)
    scheduler.start()
    log.info("nightly learning run scheduled daily at %s", at)
    return scheduler


async def serve(
    settings: Settings,
    *,
    host: str,
    port: int,
    socket_mode: bool = False,
    nightly: str | None = None,
    prune: bool = False,
) -> None:
    """Run until SIGINT or SIGTERM (Ctrl-C, docker stop), then drain answers in flight and close."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    check_teams_mode(settings, host)  # before anything loads: the Emulator's mode is loopback only
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # With the embedded shard this server owns it; kbot commands reach it through the socket.
    shard_host = None if settings.qdrant_url else ShardHost(settings.data_dir)
    if shard_host is not None:
        shard_host.check()  # before the model loads: a second server on this data dir fails at once
    async with open_runtime(settings) as runtime, contextlib.AsyncExitStack() as stack:
        if shard_host is not None:
            await shard_host.start(runtime.service.answerer.kb.store)
            stack.push_async_callback(shard_host.close)
        # Slack sends many events: per-request access lines only at -vv.
        access_log = logging.getLogger("aiohttp.access") if log.isEnabledFor(logging.DEBUG) else None
        runner = web.AppRunner(
            build_app(runtime), handle_signals=False, access_log=access_log, access_log_class=AccessLog
        )
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        shown = f"[{host}]" if ":" in host else host
        log.info("kbot listening on http://%s:%d — web chat at /, metrics at /metrics", shown, port)
        if runtime.admin.generated:
            log.warning(
                "dashboard: http://%s:%d/login?token=%s (a token for this run only: set "
                "KBOT_ADMIN_TOKEN or KBOT_ADMIN_PASSWORD to keep one)",
                shown,
                port,
                runtime.admin.token,
            )
        socket_handler: Any = None
        if runtime.teams is None:
            log.warning(
                "Teams is off: set KBOT_TEAMS_APP_ID and KBOT_TEAMS_APP_PASSWORD to turn it on (or, "
                "for the Bot Framework Emulator on this machine, KBOT_TEAMS_EMULATOR=true with a "
                "loopback --host)."
            )
        if runtime.slack is None:
            log.warning("Slack is off: set KBOT_SLACK_SIGNING_SECRET and KBOT_SLACK_BOT_TOKEN to turn it on.")
        elif socket_mode:
            socket_handler = await _start_socket_mode(runtime.slack, settings)
        else:
            log.info("Slack is on: point the app's Event Subscriptions and Interactivity at /slack/events")
        scheduler = schedule_nightly(runtime, nightly) if nightly else None
        syncing = await sources.start(runtime.service.answerer.kb, settings.sources, prune=prune)
        try:
            await stop.wait()
            log.info("stopping: finishing answers in flight (up to %.0f s)", DRAIN_S)
        finally:
            for running in (scheduler, syncing):
                if running is not None:
                    running.shutdown(wait=False)
            if socket_handler is not None:
                await socket_handler.close_async()
            await runner.cleanup()


async def _start_socket_mode(slack: SlackAdapter, settings: Settings) -> Any:
    from slack_bolt.adapter.socket_mode.aiohttp import AsyncSocketModeHandler

    if settings.slack_app_token is None:
        raise ConfigError("Socket Mode needs an app-level token: set KBOT_SLACK_APP_TOKEN (xapp-...).")
    handler = AsyncSocketModeHandler(slack.app, settings.slack_app_token.get_secret_value())
    await handler.connect_async()  # type: ignore[no-untyped-call]
    log.info("Slack is on, in Socket Mode (no public URL needed)")
    return handler
