"""The one entry point for answering: question in, streamed answer out, every answer logged.

Chat adapters and the CLI call :meth:`Answerer.stream` (or :meth:`Answerer.ask`). Failures of the
model, the vector store or the database become an answer with ``status="error"`` and a short
message for the user, within ``model_timeout_s``; they are logged, never raised into the adapter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from langchain_core.runnables import RunnableConfig

from agent.adapters import AdapterRegistry
from agent.answer_log import record_answer
from agent.backends import AdapterRef, ModelBackend
from agent.graph import AnswerContext, AnswerState, build_graph
from agent.memory import open_memory
from kbot.db.models import Answer
from kbot.errors import KbotError, public_reason
from kbot.settings import Settings
from knowledge.base import KnowledgeBase
from knowledge.verified import VerifiedAnswers

log = logging.getLogger(__name__)
ERROR_MESSAGE = "Sorry, I could not answer this right now: {reason}"


@dataclass(frozen=True)
class Question:
    text: str
    collections: list[str]
    groups: list[str] = field(default_factory=list)
    asker: str = "cli"
    platform: str = "cli"
    channel: str = ""
    thread: str = ""
    shared: bool = False  # asked where others read the answer (``groups`` already fit the place)


@dataclass(frozen=True)
class Progress:
    """Where an answer is, for a status line while it is worked on (:func:`bot.status.lines`)."""

    stage: Literal["searching", "reading"]
    sources: int = 0  # reading: how many passages the model was given


@dataclass(frozen=True)
class AnswerResult:
    answer_id: str
    answer: str
    citations: list[dict[str, Any]]
    status: str  # ok | not_found | error
    model: str
    adapter: str | None
    latency_ms: int
    error: str = ""
    error_kind: str = ""  # "timeout", or the KbotError subclass: the metrics' error label
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage (retrieval, generation)
    # The model's own text before the grounding check (None: no model was called), whether the
    # shown ``answer`` is that text and passed the check, and the check's verdict
    # ({"mode", "passed", "reasons", "fallback"}, and "verified": the correction id when a verified
    # answer was shown; empty when neither a model nor a verified answer was used).
    generated: str | None = None
    grounded: bool = False
    grounding: dict[str, Any] = field(default_factory=dict)


def open_backend(settings: Settings) -> ModelBackend:
    if settings.model_backend == "openai":
        from agent.backends.openai import OpenAIBackend

        key = settings.model_api_key.get_secret_value() if settings.model_api_key else None
        assert settings.model_url is not None  # Settings validates this
        return OpenAIBackend(
            settings.model_url, model=settings.base_model, api_key=key, timeout=settings.model_timeout_s
        )
    from agent.backends.local import LocalBackend
    from agent.base_model import resolve_base_model

    path = resolve_base_model(settings.base_model, settings.model_cache_dir)
    return LocalBackend(path, name=settings.base_model, device=settings.model_device)


class Answerer:
    def __init__(
        self,
        settings: Settings,
        kb: KnowledgeBase,
        backend: ModelBackend,
        checkpointer: Any,
        exits: AsyncExitStack,
    ) -> None:
        self.settings = settings
        self.kb = kb
        self.backend = backend
        self.adapters = AdapterRegistry(kb.db)
        # Approved corrections, answered from at once: the review queue calls add()/remove().
        self.verified = VerifiedAnswers(kb)
        self.checkpointer = checkpointer  # conversation memory: kbot forget and retention prune it
        self._graph = build_graph().compile(checkpointer=checkpointer)
        self._exits = exits

    @classmethod
    async def open(
        cls, settings: Settings, *, kb: KnowledgeBase | None = None, backend: ModelBackend | None = None
    ) -> Answerer:
        """Build from settings; a ``kb`` or ``backend`` passed in stays the caller's to close."""
        exits = AsyncExitStack()
        if kb is None:
            kb = await KnowledgeBase.open(settings)
            exits.push_async_callback(kb.close)
        if backend is None:
            backend = await asyncio.to_thread(open_backend, settings)
            exits.push_async_callback(backend.close)
        checkpointer = await exits.enter_async_context(open_memory(settings))
        return cls(settings, kb, backend, checkpointer, exits)

    async def warm_up(self) -> None:
        """Load the embedder and the model before the first question (servers call this)."""
        await asyncio.gather(self.kb.warm_up(), self.backend.warm_up())

    async def fit_question(self, text: str) -> str:
        """``text`` cut to ``max_question_tokens`` tokens of the chat model (as it is when it fits):
        the question's share of the prompt stays bounded whatever script it is written in."""
        return await self.backend.first_tokens(text, self.settings.max_question_tokens)

    async def ask(
        self,
        question: Question,
        *,
        adapter: AdapterRef | Literal["active"] | None = "active",
        grounding: Literal["strict", "off"] | None = None,
    ) -> AnswerResult:
        async for item in self.stream(question, adapter=adapter, grounding=grounding):
            if isinstance(item, AnswerResult):
                return item
        raise AssertionError("stream() always ends with an AnswerResult")

    async def stream(
        self,
        question: Question,
        *,
        adapter: AdapterRef | Literal["active"] | None = "active",
        grounding: Literal["strict", "off"] | None = None,
    ) -> AsyncIterator[str | Progress | AnswerResult]:
        """Yield the answer's text as it grows (and :class:`Progress` as stages start), then one
        :class:`AnswerResult`.

        ``grounding`` overrides ``Settings.grounding`` for this answer: the evaluation gate reads
        the model's own text with ``off``."""
        started = time.perf_counter()
        answer_id = str(uuid.uuid4())
        thread_id = (
            f"{question.platform}:{question.channel}:{question.thread}" if question.thread else answer_id
        )
        state: AnswerState = {}
        chosen = adapter
        adapter = None
        error = error_kind = ""
        try:
            if chosen == "active":
                adapter_info = await self.adapters.active()
                adapter = adapter_info.ref if adapter_info else None
            else:  # the evaluation gate compares two adapters through this same path
                adapter = chosen
            context = AnswerContext(
                kb=self.kb,
                backend=self.backend,
                collections=question.collections,
                groups=question.groups,
                adapter=adapter,
                system_prompt=self.settings.system_prompt,
                sources=self.settings.answer_sources,
                min_relevance=self.settings.min_relevance,
                max_new_tokens=self.settings.max_new_tokens,
                grounding=grounding or self.settings.grounding,
                languages=model_languages(self.settings, self.backend.base_model),
                shared=question.shared,
                verified=self.verified,
            )
            config: RunnableConfig = {"configurable": {"thread_id": thread_id}}
            # The checkpoint keeps the thread's last state: this turn's own fields start empty.
            initial: AnswerState = {
                "question": question.text,
                "timings": {},
                "messages": [],
                "citations": [],
                "generated": "",
                "grounding": {},
                "unwritten": "",
            }
            # The graph runs in its own task under the deadline and hands over tokens by queue, so
            # the time a caller spends between tokens (posting to Slack, say) never counts against
            # the model, and a timeout can never fire inside the caller's code.
            queue: asyncio.Queue[tuple[str, Any] | BaseException | None] = asyncio.Queue()
            producer = asyncio.create_task(self._produce(initial, config, context, queue))
            try:
                while (item := await queue.get()) is not None:
                    if isinstance(item, BaseException):
                        raise item
                    mode, chunk = item
                    if mode == "custom" and "stage" in chunk:
                        yield Progress(chunk["stage"], int(chunk.get("sources", 0)))
                    elif mode == "custom":
                        yield str(chunk["token"])
                    else:
                        state = chunk
            finally:
                producer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await producer
        except TimeoutError:
            error = public = f"the model did not finish within {self.settings.model_timeout_s:g} s."
            error_kind = "timeout"
        except KbotError as exc:
            error, public = str(exc), public_reason(exc)
            error_kind = type(exc).__name__
        if error:
            log.warning("answer %s failed: %s", answer_id, error)
            text = ERROR_MESSAGE.format(reason=public)
            yield text
        result = AnswerResult(
            answer_id=answer_id,
            answer=text if error else state.get("answer", ""),
            citations=[dict(c) for c in state.get("citations", [])] if not error else [],
            status="error" if error else state.get("status", "error"),
            model=self.backend.base_model,
            adapter=adapter.version if adapter else None,
            latency_ms=int((time.perf_counter() - started) * 1000),
            error=error,
            error_kind=error_kind,
            timings=dict(state.get("timings", {})),
            **_verdict(state, error),
        )
        await self._log(question, state, result)
        yield result

    async def _produce(
        self,
        initial: AnswerState,
        config: RunnableConfig,
        context: AnswerContext,
        queue: asyncio.Queue[tuple[str, Any] | BaseException | None],
    ) -> None:
        try:
            async with asyncio.timeout(self.settings.model_timeout_s):
                async for item in self._graph.astream(
                    initial, config, context=context, stream_mode=["custom", "values"]
                ):
                    queue.put_nowait(item)  # type: ignore[arg-type]  # (mode, chunk) with two stream modes
        except Exception as exc:  # noqa: BLE001 - handed to stream(), which re-raises it in the caller's task
            queue.put_nowait(exc)
            return
        queue.put_nowait(None)

    async def _log(self, question: Question, state: AnswerState, result: AnswerResult) -> None:
        # Given to the model or to the extractive answer (also when the check then found nothing).
        used = {h["chunk_id"] for h in state.get("sources") or []}
        try:
            await record_answer(
                self.kb.db,
                Answer(
                    id=result.answer_id,
                    platform=question.platform,
                    asker=question.asker,
                    channel=question.channel,
                    thread=question.thread,
                    collections=question.collections,
                    question=question.text,
                    search_query=state.get("search_query", question.text),
                    messages=[
                        {"role": m["role"], "content": m["content"]} for m in state.get("messages", [])
                    ],
                    retrieved=[
                        {
                            "chunk_id": h["chunk_id"],
                            "score": h["score"],
                            "source": h["source"],
                            # In the prompt, not just found: the export re-checks these ACLs.
                            "used": h["chunk_id"] in used,
                            # A verified answer is no chunk: its correction and ACL say who may read it.
                            **({"verified": h["verified"], "acl": list(h["acl"])} if "verified" in h else {}),
                        }
                        for h in state.get("retrieved", [])
                    ],
                    answer=result.answer,
                    citations=result.citations,
                    status=result.status,
                    error=result.error,
                    base_model=result.model,
                    adapter_version=result.adapter,
                    latency_ms=result.latency_ms,
                    # Only a question searched as asked (not a follow-up combined with the previous
                    # one) has its own vector.
                    question_vector=(
                        state.get("query_vector") or None
                        if state.get("search_query", question.text) == question.text
                        else None
                    ),
                    embedding_model=self.kb.embedder.name,
                    restricted=bool(state.get("restricted")),
                    generated=result.generated,
                    grounding=result.grounding or None,
                ),
            )
        except KbotError as exc:
            log.error("could not write answer %s to the answer log: %s", result.answer_id, exc)

    async def close(self) -> None:
        await self._exits.aclose()


def model_languages(settings: Settings, model: str) -> frozenset[str] | None:
    """The languages the chat ``model`` is asked to write (None: any)."""
    if settings.model_languages == "all":
        return None
    if settings.model_languages == "auto":
        from agent.base_model import BUNDLED

        # The bundled model by name or as its converted checkpoint's folder.
        return frozenset({"en"}) if Path(model).name == BUNDLED else None
    return frozenset(v.strip() for v in settings.model_languages.split(","))


def _verdict(state: AnswerState, error: str) -> dict[str, Any]:
    """AnswerResult's grounding fields; a model that timed out or failed has no verdict."""
    grounding = dict(state.get("grounding") or {})
    if error or not grounding:
        return {}
    return {
        "generated": state.get("generated"),
        # A verified answer passed the check too, but it is a person's text, not the model's.
        "grounded": bool(grounding["passed"])
        and grounding["fallback"] is None
        and state.get("generated") is not None,
        "grounding": grounding,
    }
