"""Who may open the dashboard and the admin APIs, and who is asking in the web chat.

Admins prove themselves with ``Authorization: Bearer <KBOT_ADMIN_TOKEN>``, HTTP basic auth
(``KBOT_ADMIN_USER``/``KBOT_ADMIN_PASSWORD``), or a session cookie that ``/login?token=…`` (or
a login with those credentials) sets: a random id, new at every login, that this server keeps
for :data:`SESSION_S` and forgets at ``POST /logout``. With neither configured, ``kbot serve``
makes a random token for its lifetime and logs the login link, as Jupyter does: the dashboard is
never open to whoever can reach the port. Wrong credentials are throttled per client address
(:class:`LoginThrottle`). Sessions and the throttle live in this process's memory: a restart
signs admins out, and behind several replicas a session opens only the replica that made it.

Web askers are anonymous visitors (a random cookie, stored only as its hash) who see documents
open to everyone — unless ``KBOT_WEB_USER_HEADER`` names the header an authenticating proxy sets.
A cookie costs nothing to drop, so anonymous askers are also known by their client address
(:class:`ClientAddress`), which only ``KBOT_TRUSTED_PROXIES`` may name through X-Forwarded-For.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from finetune.export import ANONYMOUS_PREFIX
from kbot.settings import Settings

SESSION_COOKIE = "kbot_admin"
VISITOR_COOKIE = "kbot_visitor"
_YEAR_S = 365 * 24 * 3600
SESSION_S = 12 * 3600  # an admin session's life; the cookie's max-age too
MAX_SESSIONS = 1000  # live sessions kept; the oldest goes first beyond it
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ClientAddress:
    """The address a request comes from: the connection's, unless that is a trusted proxy.

    Behind trusted proxies the client is the right-most X-Forwarded-For entry that is not itself
    a trusted proxy: everything to its right was written by proxies we trust, everything to its
    left by whoever sent the request. X-Forwarded-For from anyone else is ignored.
    """

    def __init__(self, trusted_proxies: list[str]) -> None:
        self._trusted: list[Network] = [ipaddress.ip_network(p, strict=False) for p in trusted_proxies]

    def __call__(self, request: web.BaseRequest) -> str:
        remote = request.remote or ""
        if not self._is_trusted(remote):
            return remote
        hops = [
            h.strip() for value in request.headers.getall("X-Forwarded-For", []) for h in value.split(",")
        ]
        hops = [h for h in hops if h]
        for hop in reversed(hops):
            if not self._is_trusted(hop):
                return _plain(hop)
        # Only proxies all the way: the one furthest out is as close to the client as we know.
        return _plain(hops[0]) if hops else remote

    def _is_trusted(self, address: str) -> bool:
        ip = _ip(address)
        return ip is not None and any(ip in network for network in self._trusted)


def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP in an address as proxies write it (``1.2.3.4``, ``1.2.3.4:80``, ``[::1]:80``)."""
    text = address.strip()
    if text.startswith("[") and "]" in text:
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _plain(address: str) -> str:
    ip = _ip(address)
    return str(ip) if ip is not None else address


def address_key(address: str) -> str:
    """The rate-limit key of a client address: a hash (the ledger never holds an address), of
    the whole /64 for IPv6, since one host commonly has all of one and can pick any of them."""
    ip = _ip(address)
    if isinstance(ip, ipaddress.IPv6Address):
        address = str(ipaddress.ip_network(f"{ip}/64", strict=False))
    elif ip is not None:
        address = str(ip)
    return "addr:" + hashlib.sha256(f"kbot-address:{address}".encode()).hexdigest()[:24]


@dataclass
class LoginThrottle:
    """Failed admin logins per client address: ``max_failures`` within ``window_s`` block that
    address's credential attempts for ``block_s`` (429 with Retry-After). Other addresses, and
    sessions already open, are unaffected. In memory, per server process."""

    max_failures: int = 5
    window_s: float = 60.0
    block_s: float = 300.0
    max_addresses: int = 10_000  # tracked at once (oldest dropped): memory stays bounded
    clock: Callable[[], float] = time.monotonic
    _failures: dict[str, deque[float]] = field(default_factory=dict)
    _blocked: dict[str, float] = field(default_factory=dict)  # address -> until

    def check(self, address: str) -> None:
        """Raise 429 while ``address`` is blocked."""
        until = self._blocked.get(address)
        if until is None:
            return
        left = until - self.clock()
        if left <= 0:
            del self._blocked[address]
            return
        raise web.HTTPTooManyRequests(
            text="Too many failed sign-ins from your address; try again later.",
            headers={"Retry-After": str(int(left) + 1)},
        )

    def failed(self, address: str) -> None:
        now = self.clock()
        recent = self._failures.pop(address, deque())
        recent.append(now)
        while recent and recent[0] <= now - self.window_s:
            recent.popleft()
        if len(recent) >= self.max_failures:
            self._blocked[address] = now + self.block_s
            recent.clear()
        else:
            self._failures[address] = recent  # re-inserted: the dict stays oldest first
        for table in (self._failures, self._blocked):
            while len(table) > self.max_addresses:
                del table[next(iter(table))]


class AdminAuth:
    def __init__(self, settings: Settings) -> None:
        token = settings.admin_token.get_secret_value() if settings.admin_token else ""
        self.generated = not token and settings.admin_password is None
        self.token = secrets.token_urlsafe(24) if self.generated else token
        self._user = settings.admin_user
        self._password = settings.admin_password.get_secret_value() if settings.admin_password else ""
        self.client_address = ClientAddress(settings.trusted_proxies)
        self.throttle = LoginThrottle()
        self.clock: Callable[[], float] = time.monotonic  # sessions' clock
        # sha256 of a session id -> when it expires; kept in insertion (so expiry) order.
        self._sessions: dict[str, float] = {}

    def allows(self, request: web.BaseRequest) -> bool:
        header = request.headers.get("Authorization", "")
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() == "bearer" and self.token:
            return hmac.compare_digest(credentials.strip().encode(), self.token.encode())
        if scheme.lower() == "basic" and self._password:
            return self._basic_ok(credentials.strip())
        return self._session_ok(request.cookies.get(SESSION_COOKIE, ""))

    def _basic_ok(self, credentials: str) -> bool:
        try:
            user, _, password = base64.b64decode(credentials, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return hmac.compare_digest(user.encode(), self._user.encode()) & hmac.compare_digest(
            password.encode(), self._password.encode()
        )

    def _session_ok(self, session: str) -> bool:
        if not session:
            return False
        until = self._sessions.get(_digest(session))
        return until is not None and until > self.clock()

    def require(self, request: web.Request) -> None:
        """Raise 401 unless ``request`` is an admin's (429 while its address is throttled);
        browsers get a basic-auth prompt when it is on."""
        # Credentials in a header are what a guesser sends; a session id is not worth guessing.
        attempt = bool(request.headers.get("Authorization"))
        address = address_key(self.client_address(request))
        if attempt:
            self.throttle.check(address)
        if self.allows(request):
            return
        if attempt:
            self.throttle.failed(address)
        headers = {"WWW-Authenticate": 'Basic realm="kbot admin"'} if self._password else {}
        raise web.HTTPUnauthorized(
            text="The dashboard needs the admin token (open /login?token=… or send "
            "'Authorization: Bearer …') or the admin password.",
            headers=headers,
        )

    async def login(self, request: web.Request) -> web.StreamResponse:
        """``GET /login?token=…``: check the token once, start a session, go to the dashboard."""
        given = request.query.get("token", "")
        address = address_key(self.client_address(request))
        if given:
            self.throttle.check(address)
        if not (self.token and given and hmac.compare_digest(given.encode(), self.token.encode())):
            if given:
                self.throttle.failed(address)
            self.require(request)  # basic auth or an existing session still get through
        response = web.HTTPFound("/dashboard")
        # A new id at every login, never one the browser brought: nobody can plant a session.
        response.set_cookie(
            SESSION_COOKIE,
            self._new_session(),
            max_age=SESSION_S,
            httponly=True,
            samesite="Strict",
            secure=is_https(request),
            path="/",
        )
        raise response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        """``POST /logout``: forget the session and its cookie, back to the dashboard's sign-in."""
        self._end_session(request)
        response = web.HTTPSeeOther("/dashboard")
        response.del_cookie(SESSION_COOKIE, path="/")
        raise response

    def _new_session(self) -> str:
        now = self.clock()
        while self._sessions:  # oldest first: the expired ones, then any beyond MAX_SESSIONS
            key, until = next(iter(self._sessions.items()))
            if until > now and len(self._sessions) < MAX_SESSIONS:
                break
            del self._sessions[key]
        session = secrets.token_urlsafe(32)
        self._sessions[_digest(session)] = now + SESSION_S
        return session

    def _end_session(self, request: web.BaseRequest) -> None:
        if session := request.cookies.get(SESSION_COOKIE, ""):
            self._sessions.pop(_digest(session), None)


def _digest(session: str) -> str:
    # Looked up by hash: a dict probe on the id itself could leak its prefix through timing.
    return hashlib.sha256(session.encode()).hexdigest()


def is_https(request: web.BaseRequest) -> bool:
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
    return ANONYMOUS_PREFIX + hashlib.sha256(cookie.encode()).hexdigest()[:20], new


def set_visitor_cookie(response: web.StreamResponse, value: str, *, secure: bool) -> None:
    response.set_cookie(
        VISITOR_COOKIE, value, max_age=_YEAR_S, httponly=True, samesite="Lax", secure=secure, path="/"
    )
