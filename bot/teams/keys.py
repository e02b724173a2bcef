"""Bot Framework's token signing keys, fetched and refreshed off the event loop.

botbuilder checks a Teams request's Bearer token against the signing keys published at an OpenID
metadata URL (Bot Framework's, or the Emulator's or a skill's, by the token's issuer). Its own
``_OpenIdMetadata`` fetches them with a blocking ``requests.get`` without a timeout, on the event
loop, and tries again on every request after a failed fetch: a slow key endpoint stalled every
Slack ack, web stream and health check (6 s per forged token).

The seam: every botbuilder ``JwtTokenExtractor`` (channel, Emulator, skill, government and
enterprise tokens alike) takes its key holder from ``JwtTokenExtractor.get_open_id_metadata(url)``,
which keeps one per URL in the class-level ``metadataCache``. :func:`install` makes that method
hand out a :class:`LoopFreeKeys` (a ``_OpenIdMetadata`` subclass, so the extractor uses it as it
is) and nothing else changes: botbuilder still checks the signature, issuer, audience, expiry,
endorsements and the service URL claim.

``LoopFreeKeys.get(kid)`` never fetches inside the request:

- a known key id is answered at once from the last good keys;
- a refresh (the metadata, then its ``jwks_uri``, :data:`FETCH_TIMEOUT_S` in all, with aiohttp)
  runs as a background task, one at a time per URL. It is due when no keys are known, when they
  are a day old (the old ones serve meanwhile) and, at most hourly, when a token names an unknown
  key id (botbuilder's own rules);
- a request whose answer depends on a refresh (no keys yet, an unknown key id) waits for it at most
  :data:`WAIT_S`, awaiting, so the loop stays free;
- after a failed fetch the last good keys stay and the next try waits (5 s, doubling to 5 min);
- while no keys are known, :class:`~kbot.errors.ChatError`: the adapter answers 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from datetime import datetime
from typing import Any

import aiohttp
import jwt
from botframework.connector.auth.jwt_token_extractor import (
    JwtTokenExtractor,
    _OpenIdConfig,
    _OpenIdMetadata,
)
from jwt.algorithms import RSAAlgorithm

from kbot.errors import ChatError

log = logging.getLogger(__name__)
FETCH_TIMEOUT_S = 5.0  # one refresh, both documents
WAIT_S = 1.0  # the most a request waits for a refresh it needs
MAX_AGE_S = 24 * 3600.0  # keys are refreshed daily, as botbuilder does
UNKNOWN_KID_EVERY_S = 3600.0  # an unknown key id refreshes at most this often (forged tokens)
FIRST_BACKOFF_S = 5.0
MAX_BACKOFF_S = 300.0
MAX_BYTES = 1024 * 1024  # a key document is a few kB


class LoopFreeKeys(_OpenIdMetadata):  # type: ignore[misc]  # botbuilder ships no type hints
    """The signing keys of one OpenID metadata URL; see the module docstring."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.configs: dict[str, _OpenIdConfig] = {}
        self.fetches = 0  # refreshes started (tests and logs)
        self._fetched_at: float | None = None  # monotonic time of the last good fetch
        self._retry_at = 0.0
        self._backoff = 0.0
        self._task: asyncio.Task[None] | None = None

    async def get(self, key_id: str | None) -> _OpenIdConfig | None:
        found = self.configs.get(key_id or "")
        task = self._running()
        if task is None and self._due(known=found is not None):
            task = self.refresh()
        if found is None and task is not None:
            # The answer depends on this refresh: wait for it briefly; it carries on regardless.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), WAIT_S)
            found = self.configs.get(key_id or "")
        if not self.configs:
            raise ChatError("Bot Framework's signing keys are not available yet; try again shortly.")
        return found  # None: an unknown key, which botbuilder refuses (401)

    def refresh(self) -> asyncio.Task[None]:
        """Start a refresh on the running loop, unless one is under way; the task never raises."""
        task = self._running()
        if task is None:
            self.fetches += 1
            task = self._task = asyncio.create_task(self._refresh(), name=f"signing keys {self.url}")
        return task

    async def close(self) -> None:
        """Stop a refresh under way on this loop (the server is stopping)."""
        if (task := self._running()) is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _running(self) -> asyncio.Task[None] | None:
        task = self._task
        # A task of another (closed) event loop never finishes: forgotten, not awaited.
        if task is None or task.done() or task.get_loop() is not asyncio.get_running_loop():
            return None
        return task

    def _due(self, *, known: bool) -> bool:
        now = time.monotonic()
        if now < self._retry_at:
            return False  # backing off after a failure
        if self._fetched_at is None:
            return True
        age = now - self._fetched_at
        return age > MAX_AGE_S or (not known and age > UNKNOWN_KID_EVERY_S)

    async def _refresh(self) -> None:
        try:
            async with asyncio.timeout(FETCH_TIMEOUT_S):
                keys = await _fetch_keys(self.url)
            configs = _configs(keys)
        except (aiohttp.ClientError, TimeoutError, ValueError, RecursionError) as exc:
            self._backoff = min(MAX_BACKOFF_S, self._backoff * 2 or FIRST_BACKOFF_S)
            self._retry_at = time.monotonic() + self._backoff
            log.warning(
                "cannot fetch Bot Framework's signing keys from %s (%s: %s); %s; next try in %.0f s",
                self.url,
                type(exc).__name__,
                exc or "no answer in time",
                "keeping the last good keys" if self.configs else "Teams requests get 503 until then",
                self._backoff,
            )
            return
        self.keys, self.configs = keys, configs
        self.last_updated = datetime.now()
        self._fetched_at = time.monotonic()
        self._backoff = self._retry_at = 0.0
        log.info("Bot Framework signing keys from %s: %d", self.url, len(configs))


def install() -> None:
    """Make botbuilder check every token against a :class:`LoopFreeKeys` (idempotent)."""
    JwtTokenExtractor.get_open_id_metadata = staticmethod(keys_for)


def keys_for(metadata_url: str) -> LoopFreeKeys:
    """The key holder of ``metadata_url``, replacing one of botbuilder's own made before."""
    cache: dict[str, Any] = JwtTokenExtractor.metadataCache
    found = cache.get(metadata_url)
    if not isinstance(found, LoopFreeKeys):
        found = cache[metadata_url] = LoopFreeKeys(metadata_url)
    return found


async def close_all() -> None:
    """Stop every refresh under way on this loop."""
    for holder in list(JwtTokenExtractor.metadataCache.values()):
        if isinstance(holder, LoopFreeKeys):
            await holder.close()


async def _fetch_keys(metadata_url: str) -> list[Any]:
    # trust_env: an HTTPS_PROXY in the environment applies, as it did to botbuilder's requests.
    async with aiohttp.ClientSession(trust_env=True) as session:
        metadata = await _get_json(session, metadata_url)
        jwks_uri = metadata.get("jwks_uri") if isinstance(metadata, dict) else None
        if not isinstance(jwks_uri, str) or not jwks_uri:
            raise ValueError("the OpenID metadata has no jwks_uri")
        jwks = await _get_json(session, jwks_uri)
    keys = jwks.get("keys") if isinstance(jwks, dict) else None
    if not isinstance(keys, list):
        raise ValueError("the key document has no list of keys")
    return keys


async def _get_json(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as response:
        response.raise_for_status()
        body = bytearray()
        async for chunk in response.content.iter_chunked(64 * 1024):
            body += chunk
            if len(body) > MAX_BYTES:
                raise ValueError(f"{url} sent more than {MAX_BYTES} bytes")
    return json.loads(body)


def _configs(keys: list[Any]) -> dict[str, _OpenIdConfig]:
    """The usable keys by key id; a malformed one is left out (the others still serve)."""
    configs = {}
    for key in keys:
        kid = key.get("kid") if isinstance(key, dict) else None
        if not isinstance(kid, str) or not kid:
            continue
        try:
            public_key = RSAAlgorithm.from_jwk(json.dumps(key))
        except (jwt.InvalidKeyError, ValueError, TypeError, KeyError) as exc:
            log.info("signing key %s left out: %s", kid, exc)
            continue
        endorsements = key.get("endorsements", [])
        configs[kid] = _OpenIdConfig(public_key, endorsements if isinstance(endorsements, list) else [])
    if not configs:
        raise ValueError("the key document has no usable key")
    return configs
