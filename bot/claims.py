"""A question's claim, held while it is answered: renewed, settled, and taken over when orphaned.

The claim itself is a row in ``inbound_events`` (:class:`bot.ledger.ChatLedger`); this keeps its
lease alive from the server's side and turns orphaned claims back into messages to answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import asdict, fields
from datetime import timedelta
from typing import Any

from bot.conversation import IncomingMessage
from bot.ledger import ChatLedger
from finetune.joblock import holder_id
from kbot.errors import KbotError

log = logging.getLogger(__name__)
# A sweep answers orphans this recent; older ones the asker has long given up on (or asked again).
ORPHAN_WINDOW = timedelta(minutes=10)


class Claims:
    def __init__(self, ledger: ChatLedger, lease_s: float) -> None:
        self.ledger = ledger
        self.lease = timedelta(seconds=lease_s)
        self.holder = holder_id()  # this server: host, pid and a token

    @staticmethod
    def payload(message: IncomingMessage, resume: dict[str, Any] | None) -> dict[str, Any] | None:
        """What another server needs to answer ``message``; None where no reply can be resumed."""
        return None if resume is None else {"message": asdict(message), "resume": resume}

    @contextlib.asynccontextmanager
    async def held(self, key: str) -> AsyncIterator[None]:
        """Keep the claim on ``key`` renewed while the body runs; settle it after."""
        renewing = asyncio.create_task(self._renew(key), name=f"lease {key}")
        state: Any = "failed"
        try:
            yield
            state = "answered"
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing
            try:
                await asyncio.shield(self.ledger.settle(key, self.holder, state))
            except KbotError as exc:  # the lease runs out instead; an orphan sweep may answer again
                log.error("%s: could not settle its claim (%s): %s", key, state, exc)

    async def _renew(self, key: str) -> None:
        every = self.lease.total_seconds() / 3
        while True:
            await asyncio.sleep(every)
            try:
                if not await self.ledger.renew(key, self.holder, self.lease):
                    log.warning("%s: the claim was taken over while answering it", key)
                    return
            except KbotError as exc:  # the store hiccupped: the next renewal may still be in time
                log.warning("%s: renewing its claim failed: %s", key, exc)

    async def orphans(self) -> list[tuple[IncomingMessage, dict[str, Any]]]:
        """Recent claims whose holder died before answering: the message and how to reply."""
        found = []
        for key, payload in await self.ledger.orphans(ORPHAN_WINDOW):
            try:
                found.append((_message(payload["message"]), dict(payload["resume"])))
            except (KeyError, TypeError, ValueError) as exc:
                log.error("%s: orphaned claim with an unreadable payload, not answered: %r", key, exc)
        return found


def _message(data: dict[str, Any]) -> IncomingMessage:
    known = {f.name for f in fields(IncomingMessage)}
    values: dict[str, Any] = {k: v for k, v in data.items() if k in known}
    values |= {k: tuple(v) for k, v in values.items() if isinstance(v, list)}
    return IncomingMessage(**values)
