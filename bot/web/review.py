"""The dashboard's review queue: corrections people wrote, approved (as written or edited) or rejected.

``GET /api/corrections?status=pending|approved|rejected[&limit=N]`` → ``{"status", "counts",
"items": [finetune.review.ReviewItem…]}``; ``POST /api/corrections/{id}`` with
``{"action": "approve"|"reject", "text"?: the edited text (approve only), "updated_at"?: the
item's updated_at as shown}`` → ``{"item", "counts"}``: 404 for no such correction, 409 when its
author changed it since it was shown, 400 for anything malformed.

Admins only, by the dashboard's own credentials (:class:`~bot.web.auth.AdminAuth`). POSTs take
JSON only and refuse cross-site requests (the web chat's rule): a page elsewhere cannot send JSON
without a CORS preflight, which kbot never grants, so it cannot make an admin's browser — whose
basic-auth credentials a browser would send along — approve anything.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aiohttp import web

from bot.limits import clean_text
from bot.web.auth import AdminAuth
from bot.web.chat import _json_body
from finetune.review import MAX_QUEUE, STATUSES, Review, StaleReview
from finetune.votes import MAX_TEXT
from kbot.errors import FeedbackError
from kbot.settings import Settings

NO_STORE = {"Cache-Control": "no-store"}
_MAX_ID = 2**31 - 1  # an INTEGER column: a larger id names nothing


class ReviewAPI:
    def __init__(self, settings: Settings, review: Review, auth: AdminAuth) -> None:
        self.settings = settings
        self.review = review
        self.auth = auth

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/api/corrections", self.list)
        app.router.add_post("/api/corrections/{id}", self.decide)

    async def list(self, request: web.Request) -> web.Response:
        self.auth.require(request)
        status = request.query.get("status", "pending")
        if status not in STATUSES:
            raise web.HTTPBadRequest(text=f"'status' must be one of {', '.join(STATUSES)}.")
        try:
            limit = int(request.query.get("limit", "50"))
        except ValueError:
            raise web.HTTPBadRequest(text="'limit' must be a whole number.") from None
        if not 1 <= limit <= MAX_QUEUE:
            raise web.HTTPBadRequest(text=f"'limit' must be between 1 and {MAX_QUEUE}.")
        items = await self.review.queue(status, limit=limit)
        body = {
            "status": status,
            "counts": await self.review.counts(),
            "items": [i.to_dict() for i in items],
        }
        return web.json_response(body, headers=NO_STORE)

    async def decide(self, request: web.Request) -> web.Response:
        self.auth.require(request)
        raw = request.match_info["id"]
        if not (raw.isascii() and raw.isdigit() and 1 <= int(raw) <= _MAX_ID):
            raise web.HTTPBadRequest(text="A correction's id is a whole number, like /api/corrections/12.")
        body = await _json_body(request)
        action, text, seen = _decision(body)
        # The dashboard's admins share one set of credentials: the configured admin name stands for them.
        reviewer = self.settings.admin_user
        try:
            if action == "approve":
                item = await self.review.approve(int(raw), reviewer, text=text, seen=seen)
            else:
                item = await self.review.reject(int(raw), reviewer, seen=seen)
        except StaleReview as exc:
            raise web.HTTPConflict(text=str(exc)) from exc
        except FeedbackError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from exc
        if item is None:
            raise web.HTTPNotFound(text=f"There is no correction {raw}.")
        body = {"item": item.to_dict(), "counts": await self.review.counts()}
        return web.json_response(body, headers=NO_STORE)


def _decision(body: dict[str, Any]) -> tuple[str, str | None, datetime | None]:
    """(action, edited text, updated_at seen) from a POST body, or 400."""
    action = body.get("action")
    if action not in ("approve", "reject"):
        raise web.HTTPBadRequest(text="'action' must be approve or reject.")
    text = body.get("text")
    if text is not None:
        if action != "approve":
            raise web.HTTPBadRequest(text="Only an approval takes a 'text' (the edited correction).")
        if not isinstance(text, str) or not text.strip() or len(text) > MAX_TEXT:
            raise web.HTTPBadRequest(
                text=f"'text' must be the edited correction, 1 to {MAX_TEXT:,} characters."
            )
        text = clean_text(text)  # lone surrogates from JSON escapes: no database stores them
    seen = body.get("updated_at")
    if seen is None:
        return action, text, None
    wrong = web.HTTPBadRequest(text="'updated_at' must be the item's updated_at, as listed.")
    if not isinstance(seen, str):
        raise wrong
    try:
        return action, text, datetime.fromisoformat(seen)
    except ValueError:
        raise wrong from None
