"""The Teams adapter: Bot Framework activities translated for :class:`ChatService`.

``POST /api/messages`` goes through botbuilder's ``CloudAdapter`` with
``ConfigurationBotFrameworkAuthentication``: with ``KBOT_TEAMS_APP_ID`` set, every request's
Bearer JWT is validated (issuer, audience = the app id, signing keys from Bot Framework's OpenID
metadata, fetched off the event loop by :mod:`bot.teams.keys`, channel endorsement) and anything
else gets 401 (503 while no signing keys are known). Without an app id the endpoint exists only
with ``KBOT_TEAMS_EMULATOR=true``, for the Bot Framework Emulator on this machine: ``kbot serve``
refuses it on an address other than loopback, replies go to loopback service URLs only (403
otherwise, before anything is sent), askers are named ``emulator:<id>`` and no ACL group applies
to them (nobody vouches for who they are), and the log says so loudly at start.

Whatever the mode, a request a web page could send is refused first (:mod:`bot.teams.guard`).

Activities kbot handles:

- ``message`` in a personal chat, mentioning kbot in a channel or group chat, or in a channel
  thread from someone kbot answered there → a question
  (mention stripped), answered in the same conversation (a channel thread's id carries the
  thread, so the answer lands there);
- ``invoke`` ``message/fetchTask`` and ``message/submitAction`` with ``actionName: "feedback"``
  (Teams' 👍/👎 buttons with kbot's own dialog, :mod:`bot.teams.feedback`) → a vote, then its
  reasons as the vote's comment and a better answer as a correction;
- ``messageReaction`` added/removed on kbot's answers → votes (like, heart: +1; sad, angry: -1);
- any other invoke → 200 and nothing else (kbot offers no message extensions or other dialogs).

A body that is not an activity, or an activity without the parts a reply needs (conversation,
sender, recipient, service URL), is a 400 before botbuilder sees it. A question longer than
:data:`bot.limits.MAX_QUESTION` is cut, and the asker told so.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from aiohttp import web
from botbuilder.core import ActivityHandler, InvokeResponse, TurnContext
from botbuilder.integration.aiohttp import (
    CloudAdapter,
    ConfigurationBotFrameworkAuthentication,
    ConfigurationServiceClientCredentialFactory,
)
from botbuilder.schema import Activity, ChannelAccount, ConversationReference, MessageReaction
from botframework.connector.auth import (
    AuthenticationConstants,
    ChannelValidation,
    ServiceClientCredentialsFactory,
)
from msrest.exceptions import DeserializationError  # type: ignore[attr-defined]

from bot.chat import ChatService
from bot.conversation import FeedbackEvent, IncomingMessage
from bot.limits import limit_question
from bot.teams import feedback, keys
from bot.teams.guard import is_loopback_url, refuse_both_modes, refuse_web_pages
from bot.teams.reply import TeamsReply
from kbot.errors import ChatError, ConfigError, KbotError, public_reason
from kbot.settings import Settings

log = logging.getLogger(__name__)
PLATFORM = "teams"
REACTION_VOTES = {"like": 1, "heart": 1, "sad": -1, "angry": -1}
EMULATOR_PREFIX = "emulator:"  # an Emulator asker's id: never one of a real Teams user


class _BotConfig:
    """The attribute names botbuilder's configuration classes read."""

    def __init__(self, settings: Settings) -> None:
        self.APP_ID = settings.teams_app_id or ""
        self.APP_PASSWORD = (
            settings.teams_app_password.get_secret_value() if settings.teams_app_password else ""
        )
        self.APP_TYPE = "SingleTenant" if settings.teams_tenant_id else "MultiTenant"
        self.APP_TENANTID = settings.teams_tenant_id or ""


class _Authentication(ConfigurationBotFrameworkAuthentication):  # type: ignore[misc]
    """botbuilder's authentication, with every failure to authenticate made a 401.

    For some bad tokens (a key it cannot find, an unverifiable endorsement, malformed claims)
    botbuilder raises ``AttributeError`` or bare ``Exception`` instead of ``PermissionError``,
    which CloudAdapter would answer with 500.
    """

    async def authenticate_request(self, activity: Activity, auth_header: str) -> Any:
        try:
            return await super().authenticate_request(activity, auth_header)
        except PermissionError:
            raise
        except ChatError as exc:
            # No signing keys known yet (bot.teams.keys): our outage, not the caller's fault.
            raise web.HTTPServiceUnavailable(text="cannot verify the request right now") from exc
        except Exception as exc:  # see the class docstring; the cause is logged
            log.info("Teams request refused: %s: %s", type(exc).__name__, exc)
            raise PermissionError(f"unauthenticated: {exc}") from exc


class _CachedCredentials(ServiceClientCredentialsFactory):  # type: ignore[misc]
    """One credentials object per (app, scope, login endpoint) instead of one per send.

    botbuilder builds new credentials, each with a new MSAL client (tenant discovery plus a token
    request, made synchronously), for every message it sends; reused, MSAL's token cache holds.
    """

    def __init__(self, inner: ServiceClientCredentialsFactory) -> None:
        self._inner = inner
        self._cache: dict[tuple[str, str, str, bool], Any] = {}

    async def is_valid_app_id(self, app_id: str) -> bool:
        return bool(await self._inner.is_valid_app_id(app_id))

    async def is_authentication_disabled(self) -> bool:
        return bool(await self._inner.is_authentication_disabled())

    async def create_credentials(
        self, app_id: str, oauth_scope: str, login_endpoint: str, validate_authority: bool
    ) -> Any:
        key = (app_id, oauth_scope, login_endpoint, validate_authority)
        if key not in self._cache:
            self._cache[key] = await self._inner.create_credentials(
                app_id, oauth_scope, login_endpoint, validate_authority
            )
        return self._cache[key]


def conversation_channel(conversation_id: str) -> str:
    """A channel thread's conversation id without the thread part (``19:…@thread.tacv2;messageid=…``)."""
    return conversation_id.split(";messageid=", 1)[0]


class TeamsAdapter:
    def __init__(
        self,
        settings: Settings,
        service: ChatService,
        *,
        credentials_factory: ServiceClientCredentialsFactory | None = None,
    ) -> None:
        self.settings = settings
        self.service = service
        service.resumers[PLATFORM] = self.resume
        self.app_id = settings.teams_app_id or None
        if self.app_id is None and not settings.teams_emulator:
            raise ConfigError(
                "Teams needs KBOT_TEAMS_APP_ID and KBOT_TEAMS_APP_PASSWORD (or KBOT_TEAMS_EMULATOR=true)."
            )
        refuse_both_modes(settings)
        self.emulator = self.app_id is None
        keys.install()  # before the first token: botbuilder's own fetch would block the loop
        config = _BotConfig(settings)
        factory = credentials_factory or _CachedCredentials(
            ConfigurationServiceClientCredentialFactory(config)
        )
        auth = _Authentication(config, credentials_factory=factory)
        self.cloud = CloudAdapter(auth)
        self.cloud.on_turn_error = self._on_turn_error
        self.bot = _KbotBot(self)
        if self.emulator:
            log.warning(
                "TEAMS EMULATOR MODE (KBOT_TEAMS_EMULATOR=true): /api/messages accepts activities "
                "without authentication, for the Bot Framework Emulator on this machine. Replies go to "
                "loopback service URLs only and no ACL group applies to its askers. Never in production."
            )

    async def warm_up(self) -> None:
        """Start fetching Bot Framework's signing keys, so the first message need not wait for them."""
        if not self.emulator:
            keys.keys_for(_channel_metadata_url()).refresh()

    async def close(self) -> None:
        await keys.close_all()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        refuse_web_pages(request)
        try:
            body = json.loads(await request.read())
            if not isinstance(body, dict) or not isinstance(body.get("type"), str) or not body["type"]:
                raise ValueError("an activity is a JSON object with a type")
            activity = Activity().deserialize(body)
        except (ValueError, RecursionError, DeserializationError) as exc:
            raise web.HTTPBadRequest(text=f"malformed activity: {exc}") from exc
        if missing := _missing(activity):
            raise web.HTTPBadRequest(text=f"malformed activity: it has no {missing}")
        if self.emulator and not is_loopback_url(activity.service_url):
            # Unauthenticated, the activity names where its answer goes: this machine only.
            raise web.HTTPForbidden(text="in Emulator mode kbot replies to a loopback serviceUrl only")
        tenant = self.settings.teams_tenant_id
        if tenant and activity.conversation is not None and _tenant(activity) not in (None, tenant):
            # A single-tenant bot answers its own organisation only (its token alone does not say so).
            raise web.HTTPForbidden(text="this bot serves another tenant")
        response = await self.cloud.process(request, self.bot)
        return response if response is not None else web.Response(status=201)

    def person(self, account: ChannelAccount) -> str:
        """A stable id: the AAD object id when Teams gives one (it does for people), else the
        channel id; prefixed ``emulator:`` when nobody vouches for it (no Settings.groups key matches)."""
        found = str(account.aad_object_id or account.id)
        return EMULATOR_PREFIX + found if self.emulator else found

    def reply_for(self, activity: Activity) -> TeamsReply:
        return self._reply(TurnContext.get_conversation_reference(activity))

    def _reply(self, reference: ConversationReference) -> TeamsReply:
        return TeamsReply(self.cloud, reference, app_id=self.app_id, links=self.settings.source_links)

    def resume(self, message: IncomingMessage, resume: dict[str, Any]) -> TeamsReply:
        """The reply to an orphaned question, from its stored conversation reference."""
        return self._reply(ConversationReference.deserialize(resume["reference"]))

    async def _on_turn_error(self, turn_context: TurnContext, error: Exception) -> None:
        # botbuilder's last resort for an exception inside a turn: the user hears about it.
        log.error("Teams turn failed: %s", error, exc_info=error)
        await turn_context.send_activity("Sorry, something went wrong on my side. Please try again later.")


class _KbotBot(ActivityHandler):  # type: ignore[misc]  # botbuilder ships no type hints
    def __init__(self, adapter: TeamsAdapter) -> None:
        self._adapter = adapter
        self._service = adapter.service
        self._feedback = feedback.TeamsFeedback(adapter.service, adapter.person)

    async def on_message_activity(self, turn_context: TurnContext) -> None:
        activity = turn_context.activity
        conversation = activity.conversation
        personal = (conversation.conversation_type or "personal") == "personal"
        text = activity.text or ""
        mentions = _kbot_mentions(activity)
        for mention in filter(None, mentions):  # removed once: kbot's name elsewhere stays
            text = text.replace(mention, " ", 1)
        question, reply = limit_question(" ".join(text.split()), self._adapter.reply_for(activity))
        # A channel thread's conversation id names its root post: a reply to it has another id.
        root = (conversation.id or "").partition(";messageid=")[2]
        team, channel = _channel_data_id(activity, "team"), _channel_data_id(activity, "channel")
        # Restricted documents only where the asker alone reads the answer: a one-to-one chat.
        private = personal and not conversation.is_group and not (team or channel)
        emulator = self._adapter.emulator
        message = IncomingMessage(
            platform=PLATFORM,
            key=f"{PLATFORM}:msg:{conversation.id}:{activity.id}",
            user=self._adapter.person(activity.from_property),
            channel=conversation_channel(conversation.id),
            thread=conversation.id,  # memory per chat, or per channel thread
            text=question,
            addressed=personal or bool(mentions),
            private=private,
            # Follow-ups there need no new mention from those who asked kbot in the thread
            # (Teams delivers them with the ChannelMessage.Read.Group permission).
            in_thread=bool(root) and root != activity.id,
            mentions_others=_mentions_others(activity),
            places=tuple(p for p in (channel, team) if p),
            identities=() if emulator else tuple(t for t in (_tenant(activity),) if t),
            anonymous=emulator,
        )
        reference = TurnContext.get_conversation_reference(activity)
        self._service.submit(message, reply, {"reference": reference.serialize()})

    async def on_reactions_added(
        self, message_reactions: list[MessageReaction], turn_context: TurnContext
    ) -> None:
        await self._reactions(message_reactions, turn_context, added=True)

    async def on_reactions_removed(
        self, message_reactions: list[MessageReaction], turn_context: TurnContext
    ) -> None:
        await self._reactions(message_reactions, turn_context, added=False)

    async def _reactions(
        self, reactions: list[MessageReaction], turn_context: TurnContext, *, added: bool
    ) -> None:
        activity = turn_context.activity
        for reaction in reactions:
            value = REACTION_VOTES.get(str(reaction.type))
            if value is None or not activity.reply_to_id:
                continue
            event = FeedbackEvent(
                platform=PLATFORM,
                user=self._adapter.person(activity.from_property),
                kind="vote" if added else "unvote",
                channel=conversation_channel(activity.conversation.id),
                message_id=activity.reply_to_id,
                value=value,
                origin="reaction",
                key=f"{PLATFORM}:event:{activity.id}:{reaction.type}",
            )
            try:
                await self._service.feedback(event)
            except KbotError as exc:
                log.error("could not record a Teams reaction: %s", exc)
                await turn_context.send_activity(
                    f"Sorry, I could not record your reaction: {public_reason(exc)}"
                )

    async def on_invoke_activity(self, turn_context: TurnContext) -> InvokeResponse:
        activity = turn_context.activity
        if activity.name not in (feedback.FETCH, feedback.SUBMIT):
            # Message extensions, cards, other dialogs: kbot offers none. Acknowledged with nothing, where
            # botbuilder's fallback answered 501, or 500 for a card action without a value.
            return InvokeResponse(status=200)
        return await self._feedback.invoke(activity, conversation_channel(activity.conversation.id))


def _missing(activity: Activity) -> str | None:
    """What the activity lacks of the parts kbot answers through; None when it has them all.

    The conversation id and the service URL go into the reply's HTTP request line and headers:
    printable ASCII only, as Bot Framework's are.
    """
    conversation = activity.conversation.id if activity.conversation else None
    parts = {
        "printable conversation id": _printable(conversation),
        "sender id": activity.from_property.id if activity.from_property else None,
        "recipient id": activity.recipient.id if activity.recipient else None,
        "http(s) serviceUrl": _printable(activity.service_url)
        and str(activity.service_url).startswith(("https://", "http://")),
        "id (a message's dedupe key)": activity.id or activity.type != "message",
    }
    return next((name for name, present in parts.items() if not present), None)


def _channel_metadata_url() -> str:
    """Where botbuilder reads Bot Framework's (public cloud) signing keys; tests point it elsewhere."""
    return str(
        ChannelValidation.open_id_metadata_endpoint
        or AuthenticationConstants.TO_BOT_FROM_CHANNEL_OPENID_METADATA_URL
    )


def _printable(value: str | None) -> bool:
    return value is not None and value != "" and value.isascii() and value.isprintable()


def _mentions(activity: Activity) -> list[tuple[object, str]]:
    """(who, the text or "") of each mention entity; malformed entities left out."""
    found = []
    for entity in activity.entities or []:
        props = entity.additional_properties or {}
        mentioned, text = props.get("mentioned"), props.get("text")
        if str(entity.type).lower() == "mention" and isinstance(mentioned, dict):
            found.append((mentioned.get("id"), text if isinstance(text, str) else ""))
    return found


def _kbot_mentions(activity: Activity) -> list[str]:
    """The text (``<at>kbot</at>``, or "") of each mention of kbot."""
    return [text for who, text in _mentions(activity) if who == activity.recipient.id]


def _mentions_others(activity: Activity) -> bool:
    """Someone other than kbot is mentioned: the message is addressed to them."""
    return any(who != activity.recipient.id for who, _ in _mentions(activity))


def _channel_data_id(activity: Activity, key: str) -> str | None:
    """``channelData[key].id`` (team, channel, tenant), when it is there and an id."""
    data = activity.channel_data
    value = data.get(key) if isinstance(data, dict) else None
    found = value.get("id") if isinstance(value, dict) else None
    return str(found) if found else None


def _tenant(activity: Activity) -> str | None:
    tenant = _channel_data_id(activity, "tenant") or activity.conversation.tenant_id
    return str(tenant) if tenant else None
