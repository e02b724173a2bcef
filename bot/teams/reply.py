"""One answer shown in Teams: streamed in a personal chat, else a typing indicator and one message.

The answer is sent after the incoming request has been answered (Teams wants a response within
seconds), as proactive activities through ``continue_conversation`` with the conversation
reference of the question. In a personal chat it streams (:mod:`bot.teams.stream`): what kbot
is doing, the answer as it grows, then the final message. Teams streams nowhere else, so in group
chats and channels the typing indicator is renewed every few seconds until the one message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping

import aiohttp
from botbuilder.core import TurnContext
from botbuilder.integration.aiohttp import CloudAdapter
from botbuilder.schema import Activity, ActivityTypes, ConversationReference
from msrest.exceptions import ClientRequestError, HttpOperationError

from agent.answering import AnswerResult
from bot.teams.render import answer_activity
from bot.teams.stream import TeamsStream
from kbot.errors import ChatError

log = logging.getLogger(__name__)
TYPING_EVERY_S = 3.0
_SEND_ERRORS = (HttpOperationError, ClientRequestError, aiohttp.ClientError, OSError)


class TeamsReply:
    def __init__(
        self,
        adapter: CloudAdapter,
        reference: ConversationReference,
        *,
        app_id: str | None,
        links: Mapping[str, str],
    ) -> None:
        self._adapter = adapter
        self._reference = reference
        self._app_id = app_id
        self._links = links
        self._typing: asyncio.Task[None] | None = None
        personal = reference.conversation.conversation_type == "personal"
        self.stream = TeamsStream(self.send) if personal else None

    async def working(self) -> None:
        if self.stream is None:
            self._typing = asyncio.create_task(self._keep_typing(), name="teams typing")

    async def status(self, lines: list[str]) -> None:
        if self.stream is not None and lines:
            await self.stream.inform(lines[0])

    async def update(self, text: str) -> None:
        if self.stream is not None:
            await self.stream.text(text)

    async def finish(self, result: AnswerResult) -> list[str]:
        await self._stop_typing()
        in_channel = self._reference.conversation.conversation_type == "channel"
        activity = answer_activity(result, self._links, inline_sources=in_channel)
        return [await self._final(activity)]

    async def notice(self, text: str, *, private: bool = False) -> None:
        # Teams has no message only one person in a chat sees; the notice is short and polite.
        await self._stop_typing()
        await self._final(Activity(type=ActivityTypes.message, text=text))

    async def _final(self, activity: Activity) -> str:
        if self.stream is None:
            return await self.send(activity)
        return await self.stream.final(activity)

    async def send(self, activity: Activity) -> str:
        """Send one activity into the question's conversation; the id Teams gave it."""
        sent: list[str] = []
        failed: list[Exception] = []

        async def logic(turn_context: TurnContext) -> None:
            # Caught here: escaping the turn, botbuilder would swallow it after its turn-error handler.
            try:
                response = await turn_context.send_activity(activity)
            except _SEND_ERRORS as exc:
                failed.append(exc)
                return
            sent.append(response.id if response and response.id else "")

        try:
            await self._adapter.continue_conversation(self._reference, logic, self._app_id)
        except _SEND_ERRORS as exc:
            failed.append(exc)
        if failed:
            response = getattr(failed[0], "response", None)
            code = str(getattr(response, "status_code", "") or "")
            raise ChatError(f"Teams did not accept the reply: {failed[0]}", code) from failed[0]
        return sent[0] if sent else ""

    async def _keep_typing(self) -> None:
        # Best-effort: a typing indicator that fails must never cost the answer.
        while True:
            try:
                await self.send(Activity(type=ActivityTypes.typing))
            except Exception as exc:  # noqa: BLE001 - see above; logged
                log.debug("typing indicator not sent: %s", exc)
            await asyncio.sleep(TYPING_EVERY_S)

    async def _stop_typing(self) -> None:
        if self._typing is not None:
            self._typing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._typing
            self._typing = None
