"""The web chat's adapter: HTTP in, Server-Sent Events out, into the same ChatService as Slack and Teams.

``POST /api/chat`` ``{"id": <uuid from the page>, "conversation": <uuid>, "text": …}`` answers as a
stream of events: ``working``, ``delta`` (text to append), ``answer`` (final text, citations with
quotes and links, the answer id), ``notice`` (rate limit, failure), ``end``. The page's id is the
dedupe key, so a retried request is not answered twice. ``POST /api/feedback`` records 👍/👎 and
"suggest a better answer" into the vote log; only on answers this asker was shown. A 👎 may come
again with ``"reasons"`` (values of ``GET /api/feedback/reasons``, the list Slack's and Teams'
dialogs offer) and words in ``"text"``: they become the vote's comment.

Anonymous askers (no ``KBOT_WEB_USER_HEADER``) are rate-limited per cookie and also per client
address (:class:`~bot.web.auth.ClientAddress`, hashed): dropping the cookie makes a new visitor,
not a new allowance.

Both take JSON only: a cross-site form cannot send ``application/json`` without a CORS
preflight, which kbot never grants — so another site cannot make a visitor's browser vote.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import Any

from aiohttp import web

from agent.answering import AnswerResult
from bot.chat import SPOOLED, ChatService
from bot.conversation import FeedbackEvent, IncomingMessage
from bot.limits import limit_question
from bot.links import source_url
from bot.reasons import MAX_DETAIL, REASONS, comment
from bot.web.auth import ClientAddress, address_key, is_https, set_visitor_cookie, web_user
from kbot.errors import KbotError
from kbot.settings import Settings

log = logging.getLogger(__name__)
PLATFORM = "web"
MAX_CORRECTION = 8000
_ID = re.compile(r"^[A-Za-z0-9-]{8,64}$")


class WebReply:
    """Writes one answer's events to the asker's open response; a closed tab costs nothing else."""

    def __init__(self, response: web.StreamResponse, settings: Settings) -> None:
        self._response = response
        self._settings = settings
        self._sent = 0
        self.gone = False

    async def _send(self, event: str, data: dict[str, Any]) -> None:
        if self.gone:
            return
        payload = json.dumps(data, ensure_ascii=False)
        try:
            await self._response.write(f"event: {event}\ndata: {payload}\n\n".encode())
        except ConnectionError:
            # The tab was closed: the answer is still finished and logged, just not shown.
            self.gone = True

    async def working(self) -> None:
        await self._send("working", {})

    async def status(self, lines: list[str]) -> None:
        await self._send("status", {"text": lines[0] if lines else ""})

    async def update(self, text: str) -> None:
        if len(text) > self._sent:
            await self._send("delta", {"text": text[self._sent :]})
            self._sent = len(text)

    async def finish(self, result: AnswerResult) -> list[str]:
        citations = [
            {
                "n": c.get("n"),
                "title": c.get("title", ""),
                "source": c.get("source", ""),
                "quote": c.get("quote", ""),
                "url": source_url(str(c.get("source", "")), self._settings.source_links),
            }
            for c in result.citations
        ]
        await self._send(
            "answer",
            {
                "answer_id": result.answer_id,
                "text": result.answer,
                "status": result.status,
                "citations": citations,
                "adapter": result.adapter,
                "latency_ms": result.latency_ms,
            },
        )
        # The answer id is the "message" the page shows: feedback finds the answer through it.
        return [result.answer_id] if result.status != "error" else []

    async def notice(self, text: str, *, private: bool = False) -> None:
        await self._send("notice", {"text": text})

    async def end(self, outcome: str) -> None:
        await self._send("end", {"outcome": outcome})


class WebChat:
    def __init__(self, settings: Settings, service: ChatService) -> None:
        self.settings = settings
        self.service = service
        self._address = ClientAddress(settings.trusted_proxies)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/api/chat", self.chat)
        app.router.add_post("/api/feedback", self.feedback)
        app.router.add_get("/api/feedback/reasons", self.reasons)

    async def reasons(self, _request: web.Request) -> web.Response:
        listed = [{"value": value, "label": label} for value, label in REASONS.items()]
        return web.json_response({"reasons": listed, "max_detail": MAX_DETAIL})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        user, new_cookie = web_user(request, self.settings)
        body = await _json_body(request)
        question_id = _field_id(body, "id")
        conversation = _field_id(body, "conversation")
        text = body.get("text")
        if not isinstance(text, str) or not text.strip():
            raise web.HTTPBadRequest(text="Write a question in 'text'.")
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",  # nginx: pass events on as they come
            }
        )
        if new_cookie:
            set_visitor_cookie(response, new_cookie, secure=is_https(request))
        await response.prepare(request)
        web_reply = WebReply(response, self.settings)
        text, reply = limit_question(text, web_reply)
        # Signed-in askers (the proxy's header) are people; anonymous ones are also their address.
        anonymous = not self.settings.web_user_header
        message = IncomingMessage(
            platform=PLATFORM,
            key=f"web:{user[-20:]}:{question_id}",
            user=user,
            channel=user,  # a web conversation is private to its asker
            thread=conversation,
            text=text,
            addressed=True,
            private=True,
            rate_keys=(address_key(self._address(request)),) if anonymous else (),
        )
        # Shielded: a closed tab must not cancel the answer half-way (it is logged either way).
        outcome = await asyncio.shield(self.service.submit(message, reply))
        if outcome == "duplicate":
            await reply.notice("This question was already answered (the page sent it twice).")
        await web_reply.end(outcome)
        if not web_reply.gone:
            await response.write_eof()
        return response

    async def feedback(self, request: web.Request) -> web.Response:
        user, _ = web_user(request, self.settings)
        body = await _json_body(request)
        answer_id = _field_id(body, "answer_id")
        kind = body.get("kind")
        value = body.get("value", 0)
        text = body.get("text", "")
        if kind not in ("vote", "unvote", "correction"):
            raise web.HTTPBadRequest(text="'kind' must be vote, unvote or correction.")
        if kind in ("vote", "unvote") and value not in (1, -1):
            raise web.HTTPBadRequest(text="'value' must be 1 (👍) or -1 (👎).")
        if not isinstance(text, str) or len(text) > MAX_CORRECTION:
            raise web.HTTPBadRequest(text=f"'text' must be a string of at most {MAX_CORRECTION} characters.")
        if kind == "correction" and not text.strip():
            raise web.HTTPBadRequest(text="Write the better answer in 'text'.")
        reasons = body.get("reasons")
        if reasons is not None:
            if (kind, value) != ("vote", -1) or not isinstance(reasons, list) or len(reasons) > len(REASONS):
                raise web.HTTPBadRequest(
                    text="'reasons' is a list of what was wrong, sent with a 👎 (see /api/feedback/reasons)."
                )
            if not all(isinstance(r, str) and r in REASONS for r in reasons):
                raise web.HTTPBadRequest(text=f"Each reason is one of: {', '.join(REASONS)}.")
            text = comment(reasons, text)
        event = FeedbackEvent(
            platform=PLATFORM,
            user=user,
            kind=kind,
            channel=user,
            message_id=answer_id,
            value=int(value),
            origin="web",
            text=text.strip(),
        )
        try:
            recorded = await self.service.feedback(event)
        except KbotError as exc:
            log.error("web feedback on %s was not recorded: %s", answer_id, exc)
            return web.json_response(
                {"recorded": False, "error": "Your feedback could not be saved right now; please try again."},
                status=503,
            )
        if recorded is None:
            raise web.HTTPNotFound(text="No answer with this id was shown to you.")
        if recorded == SPOOLED:  # the database is down: kept, and written when it is back
            return web.json_response({"recorded": True, "queued": True, "answer_id": answer_id}, status=202)
        return web.json_response({"recorded": True, "answer_id": recorded})


async def _json_body(request: web.Request) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise web.HTTPUnsupportedMediaType(text="Send JSON (Content-Type: application/json).")
    if request.headers.get("Sec-Fetch-Site") == "cross-site":
        raise web.HTTPForbidden(text="Cross-site requests are not accepted.")
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError, LookupError, RecursionError) as exc:
        # LookupError: an unknown charset in Content-Type; RecursionError: nested too deep.
        raise web.HTTPBadRequest(text=f"The body is not valid JSON: {type(exc).__name__}") from exc
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="The body must be a JSON object.")
    return body


def _field_id(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not _ID.match(value):
        raise web.HTTPBadRequest(text=f"'{name}' must be an id of 8 to 64 letters, digits or '-'.")
    return value
