"""Who may open the dashboard and the admin APIs, and who is asking in the web chat.

Admins prove themselves with ``Authorization: Bearer <KBOT_ADMIN_TOKEN>``, HTTP basic auth
(``KBOT_ADMIN_USER``/``KBOT_ADMIN_PASSWORD``), or a session cookie that ``/login?token=…`` sets
(an HMAC of the token, so the cookie never carries the token itself). With neither configured,
``kbot serve`` makes a random token for its lifetime and logs the login link, as Jupyter does:
the dashboard is never open to whoever can reach the port.

Web askers are anonymous visitors (a random cookie, stored only as its hash) who see documents
open to everyone — unless ``KBOT_WEB_USER_HEADER`` names the header an authenticating proxy sets.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

from aiohttp import web

from kbot.settings import Settings

SESSION_COOKIE = "kbot_admin"
VISITOR_COOKIE = "kbot_visitor"
_YEAR_S = 365 * 24 * 3600


class AdminAuth:
    def __init__(self, settings: Settings) -> None:
        token = settings.admin_token.get_secret_value() if settings.admin_token else ""
        self.generated = not token and settings.admin_password is None
        self.token = secrets.token_urlsafe(24) if self.generated else token
        self._user = settings.admin_user
        self._password = settings.admin_password.get_secret_value() if settings.admin_password else ""
        key = self.token.encode() or secrets.token_bytes(32)
        self._session = hmac.new(key, b"kbot-admin", "sha256").hexdigest()

    def allows(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() == "bearer" and self.token:
            return hmac.compare_digest(credentials.strip().encode(), self.token.encode())
        if scheme.lower() == "basic" and self._password:
            return self._basic_ok(credentials.strip())
        cookie = request.cookies.get(SESSION_COOKIE, "")
        return bool(cookie) and hmac.compare_digest(cookie.encode(), self._session.encode())

    def _basic_ok(self, credentials: str) -> bool:
        try:
            user, _, password = base64.b64decode(credentials, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return hmac.compare_digest(user.encode(), self._user.encode()) & hmac.compare_digest(
            password.encode(), self._password.encode()
        )

    def require(self, request: web.Request) -> None:
        """Raise 401 unless ``request`` is an admin's; browsers get a basic-auth prompt when it is on."""
        if self.allows(request):
            return
        headers = {"WWW-Authenticate": 'Basic realm="kbot admin"'} if self._password else {}
        raise web.HTTPUnauthorized(
            text="The dashboard needs the admin token (open /login?token=… or send "
            "'Authorization: Bearer …') or the admin password.",
            headers=headers,
        )

    async def login(self, request: web.Request) -> web.StreamResponse:
        """``GET /login?token=…``: check the token once, keep a session cookie, go to the dashboard."""
        given = request.query.get("token", "")
        if not (self.token and given and hmac.compare_digest(given.encode(), self.token.encode())):
            self.require(request)  # basic auth or an existing session still get through
        response = web.HTTPFound("/dashboard")
        secure = is_https(request)
        response.set_cookie(
            SESSION_COOKIE, self._session, httponly=True, samesite="Strict", secure=secure, path="/"
        )
        raise response


def is_https(request: web.Request) -> bool:
    """Whether the browser talks https, also where a TLS-terminating proxy says so: the cookies
    are then marked Secure. (A forged header only keeps the forger's own cookie from coming back.)"""
    return request.secure or request.headers.get("X-Forwarded-Proto", "").lower() == "https"


def web_user(request: web.Request, settings: Settings) -> tuple[str, str | None]:
    """The asker's id in the web chat, and a visitor cookie to set when they had none.

    Raises 401 when a trusted proxy header is configured but missing: the request did not come
    through the proxy, and must not be taken for an anonymous one.
    """
    if settings.web_user_header:
        name = request.headers.get(settings.web_user_header, "").strip()
        if not name:
            raise web.HTTPUnauthorized(text=f"Sign in first (no {settings.web_user_header} header).")
        return name[:200], None
    cookie = request.cookies.get(VISITOR_COOKIE, "")
    new = None
    if not (16 <= len(cookie) <= 64 and cookie.replace("-", "").replace("_", "").isalnum()):
        cookie = new = secrets.token_urlsafe(24)
    # The id stored with answers and votes is a hash: reading the database never yields a cookie.
    return "anon-" + hashlib.sha256(cookie.encode()).hexdigest()[:20], new


def set_visitor_cookie(response: web.StreamResponse, value: str, *, secure: bool) -> None:
    response.set_cookie(
        VISITOR_COOKIE, value, max_age=_YEAR_S, httponly=True, samesite="Lax", secure=secure, path="/"
    )
