"""Teams' streaming for bots in personal chats: ``typing`` activities carrying a ``streaminfo``
entity, then the final ``message``.

The order Teams wants: ``informative`` updates first (what kbot is doing), then ``streaming``
updates with the answer so far (cumulative text), every update numbered by ``streamSequence``
from 1 and sent only after the previous one was accepted, at most one per
:data:`UPDATE_EVERY_S`; the first update's activity id is the stream's id; the final message
says ``streamType: final``. A stream must end within two minutes: past :data:`STREAM_LIMIT_S`
kbot ends it with a message that says the answer follows, and sends the answer unstreamed.
Teams refuses streams where it does not offer them (403 ``ContentStreamNotAllowed``) and throttles
them (429): the answer then goes as one message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import ClassVar

from botbuilder.schema import Activity, ActivityTypes, Entity

from kbot.errors import ChatError

log = logging.getLogger(__name__)
UPDATE_EVERY_S = 1.5
STREAM_LIMIT_S = 110.0  # Teams ends a stream at 2 minutes: room for the closing message
TOO_LONG = "This is taking longer than usual. The answer follows in a new message."
GIVE_UP = {"403", "429"}  # ContentStreamNotAllowed; too many requests


class StreamInfo(Entity):  # type: ignore[misc]
    """The ``streaminfo`` entity (botbuilder's ``Entity`` serialises only ``type``)."""

    _attribute_map: ClassVar[dict[str, dict[str, str]]] = {
        "type": {"key": "type", "type": "str"},
        "stream_id": {"key": "streamId", "type": "str"},
        "stream_type": {"key": "streamType", "type": "str"},
        "stream_sequence": {"key": "streamSequence", "type": "int"},
    }

    def __init__(
        self, stream_type: str, *, stream_id: str | None = None, sequence: int | None = None
    ) -> None:
        super().__init__(type="streaminfo")
        self.stream_id = stream_id
        self.stream_type = stream_type
        self.stream_sequence = sequence


Send = Callable[[Activity], Awaitable[str]]


class TeamsStream:
    """One streamed answer. ``usable`` turns False when Teams refuses: then send one message."""

    def __init__(
        self,
        send: Send,
        *,
        every_s: float | None = None,
        limit_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._send = send
        # Read at each stream: tests shorten the module's figures.
        self._every_s = UPDATE_EVERY_S if every_s is None else every_s
        self._limit_s = STREAM_LIMIT_S if limit_s is None else limit_s
        self._clock = clock
        self._lock = asyncio.Lock()  # one update at a time, each accepted before the next
        self._id: str | None = None
        self._sequence = 0
        self._last = float("-inf")
        self._text = False  # streaming (answer text) has begun: no more informative updates
        self._pending: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self.usable = True
        self.closed = False  # ended (final sent, or cut at the time limit)

    async def inform(self, text: str) -> None:
        """An informative update; one that comes too soon is sent when its turn comes."""
        if self._text or not self.usable or self.closed:
            return
        wait = self._last + self._every_s - self._clock()
        if wait <= 0 and not self._lock.locked():
            with contextlib.suppress(ChatError):  # logged by _update; the answer goes on
                await self._update("informative", text)
            return
        if self._pending is not None:
            self._pending.cancel()  # only the latest stage is worth showing
        self._pending = asyncio.create_task(self._later(max(wait, 0), text), name="teams informative")

    async def _later(self, wait: float, text: str) -> None:
        await asyncio.sleep(wait)
        if not self._text:
            with contextlib.suppress(ChatError):  # logged by _update; the answer goes on
                await self._update("informative", text)

    async def text(self, text: str) -> None:
        """The answer so far; skipped when too soon (the final message has it all)."""
        if not self.usable or self.closed or self._clock() - self._last < self._every_s:
            return
        self._text = True
        self._cancel_pending()
        with contextlib.suppress(ChatError):
            await self._update("streaming", text)

    async def final(self, activity: Activity) -> str:
        """Send the answer, as the stream's end if one is open and usable, else as one message."""
        self._stop_tasks()
        async with self._lock:
            if self._id is not None and self.usable and not self.closed:
                activity.entities = [*(activity.entities or []), StreamInfo("final", stream_id=self._id)]
            self.closed = True
            return await self._send(activity)

    async def _update(self, kind: str, text: str) -> None:
        async with self._lock:
            if not self.usable or self.closed:
                return
            self._sequence += 1
            activity = Activity(
                type=ActivityTypes.typing,
                text=text,
                entities=[StreamInfo(kind, stream_id=self._id, sequence=self._sequence)],
            )
            try:
                sent = await self._send(activity)
            except ChatError as exc:
                self._sequence -= 1  # not seen by Teams: the next update takes its number
                if exc.code in GIVE_UP:
                    self.usable = False
                    log.info("Teams refused the stream (%s); sending the answer as one message", exc)
                else:
                    log.warning("stream update not sent: %s", exc)
                raise
            finally:
                self._last = self._clock()
            if self._id is None:
                self._id = sent
                self._watchdog = asyncio.create_task(self._deadline(), name="teams stream deadline")

    async def _deadline(self) -> None:
        await asyncio.sleep(self._limit_s)
        async with self._lock:
            if self.closed or not self.usable:
                return
            self.closed = True
            ending = Activity(type=ActivityTypes.message, text=TOO_LONG)
            ending.entities = [StreamInfo("final", stream_id=self._id)]
            try:
                await self._send(ending)
            except ChatError as exc:
                log.warning("could not end a stream at its time limit: %s", exc)

    def _cancel_pending(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None

    def _stop_tasks(self) -> None:
        """The delayed informative update and the deadline: the stream ends now."""
        self._cancel_pending()
        if self._watchdog is not None:
            self._watchdog.cancel()
