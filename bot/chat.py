"""The platform-neutral chat service: every adapter turns its payloads into these types and calls it.

An adapter (Slack, Teams, web) makes a platform event an :class:`IncomingMessage` and a :class:`Reply`
(how to show things there; :mod:`bot.conversation`) for :meth:`ChatService.submit`, feedback a
:class:`FeedbackEvent` for :meth:`ChatService.feedback`. Everything else (whether to answer,
dedupe across replicas, rate limits, one answer at a time per thread, collections and ACL
groups, the answer, the vote log) happens here, the same for every platform.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from agent.answering import Answerer, AnswerResult, Progress, Question
from bot import metrics, privacy, status
from bot.access import Access
from bot.claims import Claims
from bot.conversation import FeedbackEvent, IncomingMessage, Reply
from bot.ledger import ChatLedger
from bot.limits import FairTurns, clean_text, tokens_cut
from bot.spool import FeedbackSpool
from finetune.review import Review
from finetune.votes import VoteLog
from kbot.errors import KbotError, StoreError, public_reason
from kbot.locks import PerKey, TaskLock
from kbot.policies import ChannelPolicy
from kbot.settings import Settings

log = logging.getLogger(__name__)

RATE_WINDOW = timedelta(minutes=1)
LEDGER_RETENTION = timedelta(days=2)
RATE_LIMITED = (
    "You're asking faster than I can keep up (at most {limit} questions a minute). "
    "Please wait a moment and ask again."
)
NO_DOCUMENTS = "I have no documents to answer from yet. Ask an admin to add some with `kbot ingest`."
FAILED = "Sorry, something went wrong on my side and I could not answer: {reason} Please try again later."
RESTARTED = "Sorry, I was restarted before I could finish this answer. Please ask again."
SPOOLED = "spooled"  # what feedback() returns for an event kept on disk until the store is back
Resolver = Callable[[str], Awaitable[tuple[str, ...]]]
Outcome = Literal["answered", "ignored", "duplicate", "rate_limited", "failed"]


@dataclass
class ChatService:
    settings: Settings
    answerer: Answerer
    ledger: ChatLedger
    votes: VoteLog
    # Where feedback waits while the SQL store is down; None: such feedback fails instead.
    spool: FeedbackSpool | None = None
    access: Access = field(init=False)
    review: Review = field(init=False)  # corrections: reviewed, or approved on arrival (trust)
    # How questions and feedback ended, by outcome: the server's counters (and what tests wait on).
    stats: Counter[str] = field(init=False, default_factory=Counter)
    # Per platform: more ids of a user that need a lookup (Slack user groups), done only for
    # questions that will be answered, inside the task that reports failures.
    resolvers: dict[str, Resolver] = field(init=False, default_factory=dict)
    _tasks: set[asyncio.Task[Outcome]] = field(init=False, default_factory=set)
    # Per person giving feedback: their events in the order they came. Per thread: one answer at a time.
    _people: PerKey[TaskLock] = field(init=False, default_factory=lambda: PerKey(TaskLock))
    _threads: PerKey[TaskLock] = field(init=False, default_factory=lambda: PerKey(TaskLock))
    _slots: asyncio.Semaphore = field(init=False)
    _turns: FairTurns = field(init=False)  # at most half the slots per person (or address)
    claims: Claims = field(init=False)
    # Per platform: the Reply for an orphaned question, from the ``resume`` it was submitted with.
    resumers: dict[str, Callable[[IncomingMessage, dict[str, Any]], Reply]] = field(
        init=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        self.access = Access(self.settings)
        self.review = Review(self.answerer.kb.db, self.answerer.verified, self.settings.corrections)
        self._slots = asyncio.Semaphore(self.settings.max_concurrent_answers)
        self._turns = FairTurns(max(1, self.settings.max_concurrent_answers // 2))
        self.claims = Claims(self.ledger, self.settings.claim_lease_s)

    async def sweep(self) -> int:
        """Answer the recent questions whose server died before answering them; how many."""
        taken = 0
        for message, resume in await self.claims.orphans():
            if (resumer := self.resumers.get(message.platform)) is None:
                continue  # that platform is off here: a replica that has it answers
            self.submit(message, resumer(message, resume), resume)  # the claim decides who answers
            taken += 1
        return taken

    def submit(
        self, message: IncomingMessage, reply: Reply, resume: dict[str, Any] | None = None
    ) -> asyncio.Task[Outcome]:
        """Handle ``message`` in the background (the platform wants its ack now). ``resume``: what
        the platform's :attr:`resumers` entry needs to reply from another server, should this one
        die before answering."""
        task = asyncio.create_task(self._run(message, reply, resume), name=f"answer {message.key}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _run(self, message: IncomingMessage, reply: Reply, resume: dict[str, Any] | None) -> Outcome:
        # The top of a background task: whatever fails, the asker hears about it.
        outcome = await self._answer(message, reply, resume)
        self.stats[outcome] += 1
        metrics.MESSAGES.labels(message.platform, outcome).inc()
        # Chatter kbot ignores is most of a busy channel: logged only at debug level.
        log.log(logging.DEBUG if outcome == "ignored" else logging.INFO, "%s: %s", message.key, outcome)
        return outcome

    async def _answer(self, message: IncomingMessage, reply: Reply, resume: dict[str, Any] | None) -> Outcome:
        try:
            return await self.handle(message, reply, resume)
        except asyncio.CancelledError:
            # Shutting down past the drain deadline: the platform got its ack long ago and will
            # not retry, so say so rather than leave a placeholder hanging.
            await asyncio.shield(self._tell(message, reply, RESTARTED))
            raise
        except KbotError as exc:
            log.error("answering %s failed: %s", message.key, exc)
            metrics.ERRORS.labels(type(exc).__name__).inc()
            reason = public_reason(exc)
        except Exception:  # last resort of a background task; logged with its traceback
            log.exception("answering %s failed", message.key)
            metrics.ERRORS.labels("unexpected").inc()
            reason = "an unexpected error (it is in kbot's log)."
        await self._tell(message, reply, FAILED.format(reason=reason))
        return "failed"

    async def _tell(self, message: IncomingMessage, reply: Reply, text: str) -> None:
        try:
            await reply.notice(text)
        except Exception:  # the platform itself is failing; nothing is left but the log
            log.exception("could not tell the asker of %s: %s", message.key, text)

    async def handle(
        self, message: IncomingMessage, reply: Reply, resume: dict[str, Any] | None = None
    ) -> Outcome:
        """Decide whether to answer ``message`` and answer it through ``reply``; how it ended."""
        received = time.perf_counter()
        policy = self.access.policy(message.platform, message.channel, *message.places)
        text = clean_text(message.text).strip()
        if not policy.enabled or not text:
            return "ignored"
        if not message.addressed and not await self._is_follow_up(message, policy.mention_only):
            return "ignored"
        limit = self.settings.rate_limit_per_minute
        claim = await self.ledger.claim_question(
            message.key,
            platform=message.platform,
            actor=message.user,
            window=RATE_WINDOW,
            limit=limit,
            also=message.rate_keys,
            holder=self.claims.holder,
            lease=self.claims.lease,
            payload=self.claims.payload(message, resume),
        )
        if claim == "duplicate":
            log.info("%s already handled (retry or duplicate delivery)", message.key)
            return "duplicate"
        if claim == "limited":
            await reply.notice(RATE_LIMITED.format(limit=limit), private=True)
            return "rate_limited"
        async with self.claims.held(message.key):
            return await self._accepted(message, reply, policy, text, received)

    async def _accepted(
        self, message: IncomingMessage, reply: Reply, policy: ChannelPolicy, text: str, received: float
    ) -> Outcome:
        collections = policy.collections or await self.answerer.kb.catalog.collection_names()
        if not collections:
            await reply.notice(NO_DOCUMENTS)
            return "answered"
        # In the chat model's tokens: a 4,000-character Chinese question is ~4,000 of them.
        if (cut := await self.answerer.fit_question(text)) != text:
            text, reply = cut, tokens_cut(reply, self.settings.max_question_tokens)
        question = Question(
            text=text,
            collections=list(collections),
            groups=await self._groups(message, policy),
            asker=message.user,
            platform=message.platform,
            channel=message.channel,
            thread=message.thread,
            shared=not message.private,
        )
        turn = (f"{message.platform}:{message.user}", *message.rate_keys)
        # A question asked while the thread's last answer still streams waits (then sees it in the history).
        with self._threads.use((message.platform, message.channel, message.thread or message.key)) as thread:
            async with thread:
                await reply.working()
                async with self._turns.turn(turn), self._slots:
                    metrics.IN_FLIGHT.inc()
                    try:
                        await self._stream(message, question, reply, received)
                    finally:
                        metrics.IN_FLIGHT.dec()
        return "answered"

    async def _groups(self, message: IncomingMessage, policy: ChannelPolicy) -> list[str]:
        """The ACL groups an answer to ``message`` may use: the asker's in private; in a shared
        place only those of the asker's that the place's policy grants as well."""
        if message.anonymous or not (message.private or policy.groups):
            return []  # nothing restricted may be shown here: no need to look the asker up
        identities = message.identities
        if resolve := self.resolvers.get(message.platform):
            identities += await resolve(message.user)
        groups = self.access.groups(message.platform, (message.user, *identities))
        return groups if message.private else [g for g in groups if g in policy.groups]

    async def _stream(
        self, message: IncomingMessage, question: Question, reply: Reply, received: float
    ) -> None:
        text = ""
        async for item in self.answerer.stream(question):
            if isinstance(item, Progress):
                await reply.status(status.lines(item, question.text, question.collections))
            elif isinstance(item, AnswerResult):
                ids = await reply.finish(item)
                metrics.observe_answer(message.platform, item, time.perf_counter() - received)
                if item.status != "error":
                    await self._remember(message, item.answer_id, ids)
            else:
                # One behind: the last piece is shown by finish(). A checked answer arrives in one
                # piece, so it costs no update at all (Slack's chat.update budget is small).
                if text:
                    await reply.update(text)
                text += item

    async def _remember(self, message: IncomingMessage, answer_id: str, message_ids: list[str]) -> None:
        """Map the shown messages to the answer, for reactions. The answer is out: a failure here
        costs reaction votes on it, never the answer itself."""
        try:
            await self.ledger.record_messages(
                answer_id, platform=message.platform, channel=message.channel, message_ids=message_ids
            )
        except KbotError as exc:
            log.error("answer %s was shown, but its messages were not recorded: %s", answer_id, exc)

    async def _is_follow_up(self, message: IncomingMessage, mention_only: bool) -> bool:
        if message.mentions_others:
            return False  # talking to someone else
        if not message.in_thread:
            # A top-level message: answered only where the channel says "every message".
            return not mention_only
        # In a thread kbot answered in, the people who asked it are still talking to it.
        return await self.ledger.answered_in_thread(
            platform=message.platform, channel=message.channel, thread=message.thread, asker=message.user
        )

    @asynccontextmanager
    async def one_at_a_time(self, platform: str, user: str) -> AsyncIterator[None]:
        """Handle one person's feedback in arrival order: a later vote must not be written before
        an earlier one that is still waiting for the database. Adapters that read state to
        decide the vote (Slack's reactions) hold it across that read too."""
        with self._people.use((platform, user)) as lock:
            async with lock:
                yield

    async def feedback(self, event: FeedbackEvent) -> str | None:
        """Record ``event`` in the vote log: the answer id it concerned, None if it was not about
        one, or :data:`SPOOLED` when the SQL store is down and it waits on disk to be written."""
        event = replace(event, text=clean_text(event.text))  # every platform's, before it is kept
        async with self.one_at_a_time(event.platform, event.user):
            return await self._feedback_in_turn(event)

    async def _feedback_in_turn(self, event: FeedbackEvent) -> str | None:
        if self.spool is not None and self.spool.pending:
            return self._keep(event)  # behind what already waits, so the last word stays last
        try:
            answer_id = await self._feedback(event)
        except StoreError as exc:
            if self.spool is None:
                self._failed(exc)
                raise
            log.warning("the SQL store failed; feedback waits on disk: %s", exc)
            return self._keep(event)
        except KbotError as exc:
            self._failed(exc)
            raise
        self._recorded(event, answer_id)
        return answer_id

    def _failed(self, exc: KbotError) -> None:
        self.stats["feedback_failed"] += 1
        metrics.ERRORS.labels(type(exc).__name__).inc()

    def _recorded(self, event: FeedbackEvent, answer_id: str | None) -> None:
        self.stats["feedback_recorded" if answer_id else "feedback_ignored"] += 1
        if answer_id:
            value = str(event.value) if event.kind != "correction" else ""
            # A vote that comes with reasons (Slack's 👎 dialog) restates the vote already counted.
            kind = "reason" if event.kind == "vote" and event.text else event.kind
            metrics.FEEDBACK.labels(event.platform, kind, value).inc()

    def _keep(self, event: FeedbackEvent) -> str:
        assert self.spool is not None
        try:
            self.spool.put(asdict(replace(event, at=event.at or time.time())))
        except OSError as exc:
            raise StoreError(f"The SQL store is down and feedback could not be kept on disk: {exc}") from exc
        self.stats["feedback_spooled"] += 1
        metrics.FEEDBACK_WAITING.set(self.spool.pending)
        return SPOOLED

    async def flush_feedback(self) -> int:
        """Write the feedback waiting on disk (this server's, or left by one that is gone), if the
        store answers again; how many were written."""
        if self.spool is None or not (self.spool.pending or self.spool.rescan()):
            return 0
        written = await self.spool.replay(self._replay)
        metrics.FEEDBACK_WAITING.set(self.spool.pending)
        return written

    async def _replay(self, data: dict[str, object]) -> None:
        event = FeedbackEvent(**data)  # type: ignore[arg-type]
        # No dedupe claim: the platform's retries were answered when it was kept, and
        # writing a vote twice changes nothing; nor does it undo a newer one (``at``).
        self._recorded(event, await self._feedback(event, claim=False))

    async def _feedback(self, event: FeedbackEvent, *, claim: bool = True) -> str | None:
        if (
            claim
            and event.key
            and not await self.ledger.claim(event.key, platform=event.platform, actor=event.user)
        ):
            return None
        answer_id = event.answer_id
        if event.message_id:
            shown = await self.ledger.answer_for_message(
                platform=event.platform, channel=event.channel, message_id=event.message_id
            )
            if answer_id is not None and shown != answer_id:
                # A payload naming an answer that this message, in this place, never showed.
                log.info("ignored %s feedback on answer %s: not shown there", event.platform, answer_id)
                return None
            answer_id = shown
        if answer_id is None:
            return None  # a reaction on some other message
        at = datetime.fromtimestamp(event.at, UTC) if event.at else None
        if event.kind == "vote":
            await self.votes.vote(
                answer_id=answer_id,
                platform=event.platform,
                voter=event.user,
                value=event.value,
                origin=event.origin,
                comment=event.text,
                at=at,
            )
        elif event.kind == "unvote":
            await self.votes.unvote(
                answer_id=answer_id, voter=event.user, value=event.value or None, origin=event.origin, at=at
            )
        else:
            written = await self.votes.correct(
                answer_id=answer_id, platform=event.platform, author=event.user, text=event.text, at=at
            )
            await self.review.arrived(written)
        return answer_id

    async def housekeeping(self) -> None:
        removed = await self.ledger.prune(LEDGER_RETENTION)
        log.debug("pruned %d old inbound events", removed)
        if self.settings.retention_days:
            await privacy.expire(self.answerer, self.settings.retention_days)

    async def drain(self, timeout: float) -> None:
        """Let answers in flight finish (up to ``timeout`` s), then cancel the rest."""
        if not self._tasks:
            return
        _done, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
