"""Who may post to ``/api/messages``, checked before an activity is read.

Bot Framework (and the Emulator, a desktop app) post activities from servers; a web page must not
be able to. A browser lets a page post cross-origin without a preflight when the content type is
``text/plain`` (and any parameters, ``text/plain; x=application/json`` included), and it always
says where a request came from. So, whatever the mode:

- an ``Origin`` or ``Sec-Fetch-Site`` header is 403 (browsers send them; Bot Framework never does);
- a ``Content-Type`` that is not exactly ``application/json`` once parsed is 415.

The Emulator mode (``KBOT_TEAMS_EMULATOR=true``, no ``KBOT_TEAMS_APP_ID``) checks no token, so
the activity names both its sender and where its answer goes. It is allowed only where nothing
but this machine can reach it: ``kbot serve`` refuses to start it on another address, or together
with an app id (:func:`check_teams_mode`), and an activity whose ``serviceUrl`` is not on this
machine (:func:`is_loopback_url`) is 403 before anything is sent.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from aiohttp import web

from kbot.errors import ConfigError
from kbot.settings import Settings


def refuse_web_pages(request: web.Request) -> None:
    """403 for what a browser sent, 415 for anything but JSON."""
    if "Origin" in request.headers or "Sec-Fetch-Site" in request.headers:
        raise web.HTTPForbidden(text="activities do not come from web pages")
    if request.content_type != "application/json":
        raise web.HTTPUnsupportedMediaType(text="activities are application/json")


def check_teams_mode(settings: Settings, host: str) -> None:
    """Refuse the Emulator's open endpoint with an app id, or on an address others can reach."""
    refuse_both_modes(settings)
    if settings.teams_emulator and not is_loopback(host):
        raise ConfigError(
            "KBOT_TEAMS_EMULATOR=true opens /api/messages without authentication, so kbot serves it "
            f"on a loopback address only (--host 127.0.0.1, ::1 or localhost), not on {host!r}. For "
            "Teams itself set KBOT_TEAMS_APP_ID and KBOT_TEAMS_APP_PASSWORD instead."
        )


def refuse_both_modes(settings: Settings) -> None:
    """An app id (tokens checked) and the Emulator opt-in (none checked) contradict each other."""
    if settings.teams_emulator and settings.teams_app_id:
        raise ConfigError(
            "KBOT_TEAMS_EMULATOR=true turns Teams authentication off and KBOT_TEAMS_APP_ID turns it "
            "on: set one of them."
        )


def is_loopback(host: str | None) -> bool:
    """``host`` (a name or an address, IPv6 without brackets) is this machine only."""
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_loopback_url(url: str | None) -> bool:
    """``url`` is plainly http(s) to this machine: no user part, backslash or space from which
    another URL parser could read a different host."""
    if not url or "@" in url or "\\" in url or any(c.isspace() for c in url):
        return False
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:  # an unbalanced IPv6 bracket
        return False
    return parts.scheme in ("http", "https") and is_loopback(host)
