"""Where a citation's source can be opened: the same rule for every chat platform."""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping


def source_url(source: str, links: Mapping[str, str]) -> str | None:
    """A link for a citation's source: URLs as they are, paths through ``Settings.source_links``.

    Characters that end or split a link in chat markup (``<``, ``>``, ``|``, spaces) are
    percent-encoded; each platform's renderer adds its own escaping on top.
    """
    url = None
    if source.startswith(("https://", "http://")):
        url = source
    else:
        for prefix in sorted(links, key=len, reverse=True):
            if source.startswith(prefix):
                url = links[prefix] + urllib.parse.quote(source[len(prefix) :])
                break
    if url is None:
        return None
    return url.replace("<", "%3C").replace(">", "%3E").replace("|", "%7C").replace(" ", "%20")
