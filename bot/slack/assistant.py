"""Slack's AI-app surfaces: the agent / assistant entry point, suggested prompts, thread titles
and App Home.

- ``app_home_opened`` on the Messages tab (``agent_view`` apps): suggested prompts for the
  conversation, set without a ``thread_ts`` (with one, Slack fails silently for agent apps);
  on the Home tab: :func:`home_view`.
- ``assistant_thread_started`` (apps still on ``assistant_view``): prompts for that thread.
- A question that opens a thread in the app's DM names the thread (``setTitle``).

Prompts come from :func:`bot.suggestions.most_asked` for the DM's channel scope.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

from slack_sdk.web.async_client import AsyncWebClient

from bot.chat import ChatService
from bot.limits import clip
from bot.slack.calls import call_slack
from bot.slack.payload import field
from bot.slack.render import escape
from bot.suggestions import Asked, most_asked, recent_questions
from kbot.errors import KbotError
from knowledge.catalog import CollectionStats

log = logging.getLogger(__name__)
PLATFORM = "slack"
PROMPTS_TITLE = "Ask about your company's documents"
TITLE_LIMIT = 60
_TITLED_KEPT = 10_000  # threads titled, remembered per process so each is titled once


class SlackAssistant:
    def __init__(self, client: AsyncWebClient, service: ChatService) -> None:
        self._client = client
        self._service = service
        self._titled: OrderedDict[tuple[str, str], None] = OrderedDict()

    async def on_thread_started(self, event: dict[str, Any]) -> None:
        channel = field(event, "assistant_thread", "channel_id")
        thread_ts = field(event, "assistant_thread", "thread_ts")
        if channel and thread_ts:
            await self._suggest(channel, thread_ts)

    async def on_home_opened(self, event: dict[str, Any]) -> None:
        user, tab, channel = field(event, "user"), field(event, "tab"), field(event, "channel")
        if tab == "messages" and channel:
            await self._suggest(channel, None)
        elif tab == "home" and user:
            try:
                view = await self.home(user, channel)
                await call_slack("views.publish", self._client.views_publish(user_id=user, view=view))
            except KbotError as exc:  # App Home stays as it was; nobody is waiting on it
                log.warning("App Home for %s not published: %s", user, exc)

    async def title(self, channel: str, thread_ts: str, question: str) -> None:
        """Name a DM thread after its first question (once per thread and process)."""
        key = (channel, thread_ts)
        if key in self._titled:
            return
        self._titled[key] = None
        if len(self._titled) > _TITLED_KEPT:
            self._titled.popitem(last=False)
        title = clip(question, TITLE_LIMIT)
        try:
            await call_slack(
                "assistant.threads.setTitle",
                self._client.assistant_threads_setTitle(channel_id=channel, thread_ts=thread_ts, title=title),
            )
        except KbotError as exc:  # a thread that is no assistant thread, or an older workspace
            log.debug("thread %s not titled: %s", thread_ts, exc)

    async def _scope(self, channel: str) -> list[str]:
        policy = self._service.access.policy(PLATFORM, channel)
        return list(policy.collections or await self._service.answerer.kb.catalog.collection_names())

    async def _suggest(self, channel: str, thread_ts: str | None) -> None:
        try:
            questions = await most_asked(self._service.answerer.kb.db, await self._scope(channel))
            if not questions:
                return
            prompts = [{"title": clip(q, 75), "message": q} for q in questions[:4]]
            await call_slack(
                "assistant.threads.setSuggestedPrompts",
                self._client.assistant_threads_setSuggestedPrompts(
                    channel_id=channel, thread_ts=thread_ts, title=PROMPTS_TITLE, prompts=prompts
                ),
            )
        except KbotError as exc:  # the thread opens without prompts
            log.warning("suggested prompts not set in %s: %s", channel, exc)

    async def home(self, user: str, channel: str) -> dict[str, Any]:
        """The Home tab for ``user``: what kbot answers from, how to give feedback, their questions."""
        kb = self._service.answerer.kb
        scope = set(await self._scope(channel or "D"))
        stats = [c for c in await kb.catalog.stats() if c.name in scope]
        asked = await recent_questions(kb.db, PLATFORM, user)
        return home_view(stats, asked)


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


VOTE_SHOWN = {1: "👍", -1: "👎", 0: "no vote yet"}


def home_view(collections: list[CollectionStats], asked: list[Asked]) -> dict[str, Any]:
    if collections:
        answers_from = "\n".join(
            f"• *{escape(c.name)}*: {c.documents} document{'s' if c.documents != 1 else ''}"
            for c in collections
        )
    else:
        answers_from = "No documents yet. An administrator adds them with `kbot ingest`."
    if asked:
        mine = "\n".join(
            f"• {escape(clip(a.question, 150))}  ·  {VOTE_SHOWN.get(a.vote, '')}  ·  "
            f"<!date^{int(a.at.timestamp())}^{{date_short}}|{a.at:%Y-%m-%d}>"
            for a in asked
        )
    else:
        mine = "You have not asked anything yet. Ask in a direct message, or mention me in a channel."
    return {
        "type": "home",
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": "kbot"}},
            _section(
                "I answer questions from your company's documents and cite where each answer comes from. "
                "Ask me in a direct message or from the AI apps bar, or mention me in a channel."
            ),
            _section(f"*What I can answer from*\n{answers_from}"),
            _section(
                "*Giving feedback*\nUse 👍 / 👎 under an answer (or react with them); "
                "👎 asks what was wrong. *✏️ Suggest a better answer* lets you write the right one: "
                "once a reviewer approves it, I answer with it and learn from it."
            ),
            {"type": "divider"},
            _section(f"*Your recent questions*\n{mine}"),
        ],
    }
