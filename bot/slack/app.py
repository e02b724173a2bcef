"""The Slack adapter: slack-bolt listeners that translate Slack payloads for :class:`ChatService`.

Bolt verifies every HTTP request (signing secret, 5-minute replay window), answers
``url_verification``, ignores kbot's own events and acks before any listener runs; the listeners
here only translate. Events kbot handles:

- ``app_mention`` → a question, answered in the mention's thread;
- ``message`` → direct messages, follow-ups in threads kbot answered in, and every message of
  channels whose policy is ``mention_only = false``;
- ``reaction_added`` / ``reaction_removed`` with 👍/👎 (any skin tone) on kbot's answers → votes;
- the answer's buttons → votes (👎 also opens "What was wrong?", :mod:`bot.slack.feedback`), and a
  modal whose text is stored as a correction.

A body bolt cannot read is a 400 before dispatch (:mod:`bot.slack.payload`); fields of other types
make a listener ignore the event. Questions over :data:`bot.limits.MAX_QUESTION` are cut, with a
private notice. Only direct messages are private: channel answers use what the channel may see.

Bot scopes: ``app_mentions:read``, ``chat:write``, ``im:history``, ``channels:history`` (and
``groups:history``), ``reactions:read``; ``usergroups:read`` when ``Settings.groups`` names groups.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Literal

from slack_bolt.async_app import AsyncApp
from slack_bolt.authorization import AuthorizeResult
from slack_bolt.context.ack.async_ack import AsyncAck
from slack_bolt.context.async_context import AsyncBoltContext
from slack_bolt.middleware.async_middleware import AsyncMiddleware
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_bolt.response import BoltResponse
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse

from bot.chat import ChatService
from bot.conversation import FeedbackEvent, IncomingMessage
from bot.limits import limit_question
from bot.slack import render
from bot.slack.assistant import SlackAssistant
from bot.slack.calls import call_slack, slack_client
from bot.slack.directory import SlackDirectory
from bot.slack.feedback import REASONS_VIEW, DownvoteReasons
from bot.slack.payload import field, modal_metadata
from bot.slack.reply import SlackReply, UpdateBudget
from bot.slack.stream import Capabilities
from bot.slack.text import clean_text, mentions, vote_value
from kbot.errors import ConfigError, KbotError
from kbot.settings import Settings

log = logging.getLogger(__name__)
PLATFORM = "slack"
# Message subtypes that are a person writing; the rest are edits, joins, bots, deletions…
_PERSON_SUBTYPES = {None, "thread_broadcast", "file_share"}


class IgnoreOtherBots(AsyncMiddleware):
    """Messages from bots (kbot itself is already skipped by bolt) are never questions."""

    async def async_process(self, *, req: AsyncBoltRequest, resp: BoltResponse, next: Any) -> BoltResponse:
        event = req.body.get("event") or {}
        if event.get("type") in ("message", "app_mention") and (
            event.get("bot_id") or event.get("subtype") == "bot_message"
        ):
            return await req.context.ack()
        response: BoltResponse = await next()
        return response


class SlackAdapter:
    def __init__(
        self, settings: Settings, service: ChatService, client: AsyncWebClient | None = None
    ) -> None:
        if settings.slack_signing_secret is None or settings.slack_bot_token is None:
            raise ConfigError("Slack needs KBOT_SLACK_SIGNING_SECRET and KBOT_SLACK_BOT_TOKEN.")
        self.settings = settings
        self.service = service
        self.client = client or slack_client(settings)
        self.directory = SlackDirectory(self.client, service.access.group_ids(PLATFORM, "S"))
        service.resolvers[PLATFORM] = self.directory.usergroups_of
        service.resumers[PLATFORM] = self.resume
        self.budget = UpdateBudget()
        self.capabilities = Capabilities(streaming=settings.slack_streaming)
        self._identity: AsyncSlackResponse | None = None
        self.reasons = DownvoteReasons(self.client, service, self._tell)
        self.assistant = SlackAssistant(self.client, service)

        async def authorize(enterprise_id: str | None, team_id: str | None) -> AuthorizeResult:
            # A plain function: bolt passes arguments by parameter name (a method's self confuses it).
            return await self._authorize()

        self.app = AsyncApp(
            signing_secret=settings.slack_signing_secret.get_secret_value(),
            client=self.client,
            authorize=authorize,
            process_before_response=False,
            logger=logging.getLogger("kbot.slack.bolt"),
        )
        self.app.use(IgnoreOtherBots())
        self.app.event("app_mention")(self.on_mention)
        self.app.event("message")(self.on_message)
        self.app.event("assistant_thread_started")(self.assistant.on_thread_started)
        self.app.event("app_home_opened")(self.assistant.on_home_opened)
        self.app.event("reaction_added")(self.on_reaction_added)
        self.app.event("reaction_removed")(self.on_reaction_removed)
        self.app.action(render.FEEDBACK)(self.on_vote_button)
        self.app.action(render.VOTE_UP)(self.on_vote_button)
        self.app.action(render.VOTE_DOWN)(self.on_vote_button)
        self.app.action(render.SUGGEST)(self.on_suggest)
        self.app.view(render.CORRECTION_VIEW)(self.on_correction)
        self.app.view(REASONS_VIEW)(self.reasons.on_submit)

    # --- questions ---

    async def _authorize(self) -> AuthorizeResult:
        """Who kbot is in the workspace, from one auth.test: bolt would otherwise call it inside
        the first request, and a slow Slack would then delay that request's ack."""
        if self._identity is None:
            self._identity = await self.client.auth_test()
        token = self.client.token or ""
        return AuthorizeResult.from_auth_test_response(
            auth_test_response=self._identity, bot_token=token, user_token=None
        )

    async def warm_up(self) -> None:
        """Learn kbot's identity before the first event (a failure here is retried on that event)."""
        try:
            await self._authorize()
        except (SlackApiError, OSError, TimeoutError) as exc:
            log.warning("Slack's auth.test failed at start (%s); trying again on the first event", exc)

    async def on_mention(
        self, event: dict[str, Any], body: dict[str, Any], context: AsyncBoltContext
    ) -> None:
        await self._question(event, body, context, addressed=True)

    async def on_message(
        self, event: dict[str, Any], body: dict[str, Any], context: AsyncBoltContext
    ) -> None:
        subtype = event.get("subtype")
        if (subtype is not None and field(event, "subtype") not in _PERSON_SUBTYPES) or not event.get("user"):
            return
        is_dm = event.get("channel_type") == "im"
        if not is_dm and context.bot_user_id in mentions(field(event, "text")):
            return  # the app_mention event for the same message answers it
        await self._question(event, body, context, addressed=is_dm)

    async def _question(
        self, event: dict[str, Any], body: dict[str, Any], context: AsyncBoltContext, *, addressed: bool
    ) -> None:
        channel, ts, user = field(event, "channel"), field(event, "ts"), field(event, "user")
        if not (channel and ts and user):
            log.info("ignored a %s event without a channel, ts or user", field(event, "type"))
            return
        thread_ts = field(event, "thread_ts") or None
        is_dm = event.get("channel_type") == "im" or channel.startswith("D")
        team = field(event, "team") or field(body, "team_id")
        text = field(event, "text")
        # Also what another server needs to answer it, should this one die first.
        resume: dict[str, Any] = {
            "thread_ts": thread_ts or (None if is_dm else ts),
            "team": field(event, "user_team") or team,
        }
        reply = self._reply(channel, user, resume)
        question, answer_with = limit_question(clean_text(text, context.bot_user_id), reply)
        message = IncomingMessage(
            platform=PLATFORM,
            key=f"{PLATFORM}:msg:{channel}:{ts}",
            user=user,
            channel=channel,
            # Memory: per thread in channels; a whole DM is one conversation, threads in it included.
            thread=channel if is_dm else thread_ts or ts,
            text=question,
            addressed=addressed,
            private=is_dm,
            in_thread=bool(thread_ts and thread_ts != ts),
            mentions_others=bool(mentions(text) - {context.bot_user_id, user}),
            identities=(team,) if team else (),
        )
        if is_dm and thread_ts and thread_ts != ts:
            await self.assistant.title(channel, thread_ts, question)
        self.service.submit(message, answer_with, resume)

    def resume(self, message: IncomingMessage, resume: dict[str, Any]) -> SlackReply:
        """The reply to an orphaned question (its server died before answering)."""
        return self._reply(message.channel, message.user, resume)

    def _reply(self, channel: str, user: str, where: dict[str, Any]) -> SlackReply:
        return SlackReply(
            self.client,
            channel=channel,
            thread_ts=where["thread_ts"],
            user=user,
            interval=self.settings.slack_update_interval_s,
            links=self.settings.source_links,
            team=where["team"],
            capabilities=self.capabilities,
            budget=self.budget,
        )

    # --- feedback ---

    async def on_reaction_added(
        self, event: dict[str, Any], body: dict[str, Any], context: AsyncBoltContext
    ) -> None:
        await self._reaction(event, body, context, added=True)

    async def on_reaction_removed(
        self, event: dict[str, Any], body: dict[str, Any], context: AsyncBoltContext
    ) -> None:
        await self._reaction(event, body, context, added=False)

    async def _reaction(
        self, event: dict[str, Any], body: dict[str, Any], context: AsyncBoltContext, *, added: bool
    ) -> None:
        value = vote_value(field(event, "reaction"))
        if value is None or field(event, "item", "type") != "message":
            return
        if context.bot_user_id and event.get("item_user") not in (None, context.bot_user_id):
            return  # a reaction on someone else's message
        user, channel, ts = field(event, "user"), field(event, "item", "channel"), field(event, "item", "ts")
        if not (user and channel and ts):
            log.info("ignored a reaction event without a user, channel or ts")
            return
        # Slack may deliver reaction events late or out of order; the message's reactions now are
        # the truth, and reading them makes the last event handled leave the right vote — read
        # and written in the person's turn, or an older read could be written last.
        async with self.service.one_at_a_time(PLATFORM, user):
            await self._record_reaction(body, event, channel, ts, user, added=added, value=value)

    async def _record_reaction(
        self,
        body: dict[str, Any],
        event: dict[str, Any],
        channel: str,
        ts: str,
        user: str,
        *,
        added: bool,
        value: int,
    ) -> None:
        kind, value = await self._reaction_vote(channel, ts, user, added=added, value=value)
        feedback = FeedbackEvent(
            platform=PLATFORM,
            user=user,
            kind=kind,
            channel=channel,
            message_id=ts,
            value=value,
            origin="reaction",
            key=f"{PLATFORM}:event:{body.get('event_id') or event.get('event_ts')}",
        )
        try:
            await self.service.feedback(feedback)
        except KbotError as exc:
            log.error("could not record a reaction vote: %s", exc)
            await self._tell(
                feedback.channel, feedback.user, None, f"Sorry, I could not record your vote: {exc}"
            )

    async def _reaction_vote(
        self, channel: str, ts: str, user: str, *, added: bool, value: int
    ) -> tuple[Literal["vote", "unvote"], int]:
        """The vote ``user``'s reactions on the message amount to now (the event's, if unreadable)."""
        event_says: tuple[Literal["vote", "unvote"], int] = ("vote" if added else "unvote", value)
        try:
            response = await call_slack(
                "reactions.get", self.client.reactions_get(channel=channel, timestamp=ts, full=True)
            )
        except KbotError as exc:
            log.warning("cannot read reactions (%s); taking the event as it is", exc)
            return event_says
        signs: set[int] = set()
        for r in (response.get("message") or {}).get("reactions") or []:
            sign = vote_value(str(r.get("name", "")))
            if sign is not None and user in (r.get("users") or []):
                signs.add(sign)
        if len(signs) == 1:
            return "vote", signs.pop()
        if not signs:
            return "unvote", value  # takes back a vote of this sign only
        return event_says  # both 👍 and 👎: the latest event decides

    async def on_vote_button(self, ack: AsyncAck, body: dict[str, Any], action: dict[str, Any]) -> None:
        await ack()
        user, channel, thread = _who_where(body)
        shown_in = _clicked_message(body)
        voted = render.vote_of(action)
        if not (user and channel and shown_in and voted):
            log.info("ignored a vote button without a user, channel, message or known value")
            return
        value, answer_id = voted
        # The button names its answer; the vote counts only if that answer is what the clicked
        # message in this channel shows (ChatService checks the pair).
        vote = FeedbackEvent(
            platform=PLATFORM, user=user, kind="vote", answer_id=answer_id, channel=channel,
            message_id=shown_in, value=value, origin="button",
        )  # fmt: skip

        async def record() -> str | None:
            try:
                return "" if await self.service.feedback(vote) is None else None
            except KbotError as exc:
                return f"Sorry, I could not record your vote: {exc}"

        # Both at once: the vote takes its turn among the person's feedback first (so a later
        # click stays the last word), while the dialog opens within its trigger's 3 s.
        if value < 0:
            trigger = field(body, "trigger_id")
            dialog = self.reasons.ask(trigger, vote.answer_id or "", channel, thread, shown_in)
            failed, asked = await asyncio.gather(record(), dialog)
        else:
            failed, asked = await record(), False
        if failed == "" or (failed is None and asked):
            return  # not counted; or counted, and the open dialog says so
        thanks = "Thanks, your 👍 is noted." if value > 0 else "Thanks, your 👎 is noted."
        await self._tell(channel, user, thread, failed or thanks)

    async def on_suggest(self, ack: AsyncAck, body: dict[str, Any], action: dict[str, Any]) -> None:
        await ack()
        user, channel, thread = _who_where(body)
        if not (user and field(body, "trigger_id")):
            return  # no one to show the form to
        modal = render.correction_modal(field(action, "value"), channel, thread or "", _clicked_message(body))
        try:
            trigger = field(body, "trigger_id")
            await call_slack("views.open", self.client.views_open(trigger_id=trigger, view=modal))
        except KbotError as exc:
            await self._tell(channel, user, thread, f"Sorry, I could not open the form: {exc}")

    async def on_correction(self, ack: AsyncAck, body: dict[str, Any], view: dict[str, Any]) -> None:
        text = field(view, "state", "values", render.CORRECTION_BLOCK, render.CORRECTION_INPUT, "value")
        if not text.strip():
            await ack(
                response_action="errors", errors={render.CORRECTION_BLOCK: "Please write the better answer."}
            )
            return
        # Ack now: Slack gives the modal 3 s, and a busy database must not turn into an error page.
        await ack()
        meta = modal_metadata(view)
        user = field(body, "user", "id")
        if not user:
            log.warning("ignored a correction without a user")
            return
        try:
            recorded = await self.service.feedback(
                FeedbackEvent(
                    platform=PLATFORM,
                    user=user,
                    kind="correction",
                    answer_id=field(meta, "answer_id"),
                    channel=field(meta, "channel"),
                    message_id=field(meta, "message"),
                    origin="button",
                    text=text,
                )
            )
            if recorded is None:
                log.warning("ignored a correction on an answer not shown in %s", field(meta, "channel"))
                return
            reply = "Thanks! Your suggested answer is saved; kbot learns from it in its next training."
        except KbotError as exc:
            log.error("could not store a correction: %s", exc)
            reply = f"Sorry, your suggested answer could not be saved: {exc} Please try again."
        if field(meta, "channel"):
            await self._tell(field(meta, "channel"), user, field(meta, "thread") or None, reply)
        else:
            log.warning("correction by %s had no channel to confirm in", user)

    async def _tell(self, channel: str, user: str, thread: str | None, text: str) -> None:
        """A message only ``user`` sees; failing to send it is logged, not raised."""
        try:
            await call_slack(
                "chat.postEphemeral",
                self.client.chat_postEphemeral(channel=channel, user=user, thread_ts=thread, text=text),
            )
        except KbotError as exc:
            log.warning("could not tell %s in %s: %s", user, channel, exc)


def _clicked_message(body: dict[str, Any]) -> str:
    """The ts of the message whose button was clicked."""
    return field(body, "container", "message_ts") or field(body, "message", "ts")


def _who_where(body: dict[str, Any]) -> tuple[str, str, str | None]:
    """The clicking user, the channel and the thread of a block_actions payload."""
    channel = field(body, "container", "channel_id") or field(body, "channel", "id")
    thread = field(body, "message", "thread_ts") or field(body, "container", "thread_ts")
    return field(body, "user", "id"), channel, thread or None
