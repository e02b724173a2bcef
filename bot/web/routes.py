"""Mounts the web UI on the server's aiohttp app: pages, static files, chat and dashboard APIs."""

from __future__ import annotations

import logging
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Handler

from bot.chat import ChatService
from bot.web import insights
from bot.web.auth import AdminAuth
from bot.web.chat import WebChat
from bot.web.review import ReviewAPI
from kbot.errors import StoreError
from kbot.settings import Settings

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
# The pages load only their own scripts and styles, and talk only to this server.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
# Sent on every response, whatever made it (pages, static files, errors, event streams): a page
# served under another path must not be frameable or sniffed into something else.
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
MAX_DAYS = 366


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: runs for every response, streamed and static ones included."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)


class WebUI:
    def __init__(self, settings: Settings, service: ChatService, auth: AdminAuth) -> None:
        self.settings = settings
        self.service = service
        self.auth = auth

    def mount(self, app: web.Application) -> None:
        app.on_response_prepare.append(security_headers)
        if self.settings.web_chat:
            app.router.add_get("/", self._page("index.html"))
            WebChat(self.settings, self.service).add_routes(app)
        app.router.add_get("/dashboard", self._page("dashboard.html"))
        app.router.add_get("/login", self.auth.login)
        app.router.add_post("/logout", self.auth.logout)
        app.router.add_get("/api/dashboard", self.dashboard_data)
        ReviewAPI(self.settings, self.service.review, self.auth).add_routes(app)
        app.router.add_static("/static/", STATIC, append_version=False)

    @staticmethod
    def _page(name: str) -> Handler:
        async def page(request: web.Request) -> web.StreamResponse:
            # The dashboard page itself holds no data; its API checks the admin's credentials.
            return web.FileResponse(STATIC / name)

        return page

    async def dashboard_data(self, request: web.Request) -> web.Response:
        self.auth.require(request)
        try:
            days = int(request.query.get("days", "30"))
        except ValueError:
            raise web.HTTPBadRequest(text="'days' must be a whole number.") from None
        if not 1 <= days <= MAX_DAYS:
            raise web.HTTPBadRequest(text=f"'days' must be between 1 and {MAX_DAYS}.")
        try:
            data = await insights.gather(self.service.answerer.kb.db, days=days)
            active = await self.service.answerer.adapters.active()
        except StoreError as exc:
            log.error("dashboard query failed: %s", exc)
            return web.json_response({"error": "The database is not available right now."}, status=503)
        body = data.to_dict() | {"active_adapter": active.version if active else None}
        return web.json_response(body, headers={"Cache-Control": "no-store"})
