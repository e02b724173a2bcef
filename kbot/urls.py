"""URLs as they may be shown in messages and logs: credentials masked.

Settings such as ``KBOT_MODEL_URL`` or ``KBOT_QDRANT_URL`` may carry credentials
(``https://user:password@host``, ``?api_key=…``); an error message names the server it could
not reach, and must not hand those to whoever reads the log or the ``kbot doctor`` output.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"
# A query parameter whose name contains one of these holds a credential.
_SECRET_PARAMS = ("key", "token", "secret", "password", "passwd", "auth", "sig", "credential")


def shown_url(url: str) -> str:
    """``url`` with its password (or a user name standing alone, often a token) and secret-looking
    query values replaced by ``***``."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # an invalid port or IPv6 literal: nothing can be shown of it safely
        return "(a URL kbot cannot parse)"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:{MASK}@{host}" if password is not None else f"{MASK}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        masked = [(k, MASK if any(s in k.lower() for s in _SECRET_PARAMS) else v) for k, v in pairs]
        query = urlencode(masked, safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
