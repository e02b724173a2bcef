"""The answer graph: condense → verified → retrieve → judge → generate → ground → finalize (LangGraph).

Each node is a small async function of the state and the run's :class:`AnswerContext`. The
thread's history lives in the state and is persisted per thread by the checkpointer, so a
follow-up question in the same thread sees the earlier turns.

Nothing the model writes is shown before :func:`ground` has checked it against its passages
(:mod:`agent.grounding`): with ``grounding="strict"`` the draft's tokens are held back, and the
checked text (the draft, a cited extractive answer, or "not found") is streamed once. Only
``grounding="off"`` streams the model's tokens as they come. An approved correction that answers
the question (:mod:`agent.verified_reply`) goes straight to ``finalize``, without the model.
"""

from __future__ import annotations

import asyncio
import logging
import operator
import re
import time
from dataclasses import asdict, dataclass
from typing import Annotated, Any, TypedDict

from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime

from agent.backends import AdapterRef, Message, ModelBackend
from agent.citations import Citation, build_citations, cited_numbers
from agent.extractive import extractive_answer
from agent.grounding import Verdict, accepts, check, doomed, language
from agent.prompts import build_messages
from agent.verified_reply import verified_reply
from knowledge.base import MIN_DENSE_COVERAGE, KnowledgeBase
from knowledge.sparse import keywords
from knowledge.vectorstore import Hit
from knowledge.verified import VerifiedAnswers

log = logging.getLogger(__name__)
_ENDS = re.compile(r"[.!?。！？\n]")
HISTORY_TURNS = 3  # earlier turns shown to the model; older ones stay in the checkpoint only
# Said in the asker's language (agent.grounding.language of the question); English otherwise.
NOT_FOUND = {
    "en": "I could not find this in the documents available to you.",
    "zh-Hant": "我在你可查閱的文件中找不到這個問題的答案。",
    "zh-Hans": "我在你可查阅的文件中找不到这个问题的答案。",
}
NOT_FOUND_SHARED = {
    "en": "I could not find this in the documents everyone here may see. Documents shared with only "
    "some teams are used when you ask me in a direct message.",
    "zh-Hant": "我在這裡每個人都能查閱的文件中找不到答案。只分享給部分團隊的文件，請私訊我詢問。",
    "zh-Hans": "我在这里每个人都能查阅的文件中找不到答案。只分享给部分团队的文件，请私信我询问。",
}
CLOSEST = {"en": "The closest passages I found:", "zh-Hant": "最接近的段落：", "zh-Hans": "最接近的段落："}


def said_in(table: dict[str, str], question: str) -> str:
    lang = language(question)
    return table.get("zh-Hant" if lang == "zh" else lang, table["en"])


class Turn(TypedDict):
    question: str
    answer: str


class AnswerState(TypedDict, total=False):
    question: str
    history: Annotated[list[Turn], operator.add]
    search_query: str
    retrieved: list[dict[str, Any]]
    sources: list[dict[str, Any]]
    messages: list[Message]
    answer: str
    citations: list[Citation]
    status: str
    # The search query's embedding, when the embedder can read it: kept in the answer log so the
    # feedback export can group near-duplicate questions without embedding them again.
    query_vector: list[float]
    # Seconds spent per stage of this turn ("retrieval", "generation"): the server's latency metrics.
    timings: dict[str, float]
    # Restricted text (a source ingested with --acl) reached the model in this thread: the turn's
    # prompt, or an earlier turn's that is now its history. Sticky (or-ed) across the thread's turns.
    restricted: Annotated[bool, operator.or_]
    # The model's own text (``answer`` is what is shown) and the grounding check's verdict on it:
    # {"mode", "passed", "reasons", "fallback": None | "extractive" | "not_found"}.
    generated: str | None
    grounding: dict[str, Any]
    # Why the model was not asked (it does not write the asker's language), or "".
    unwritten: str
    # The correction id of the verified answer shown this turn, or None (set every turn).
    verified: int | None


@dataclass(kw_only=True)
class AnswerContext:
    kb: KnowledgeBase
    backend: ModelBackend
    collections: list[str]
    groups: list[str]
    adapter: AdapterRef | None
    system_prompt: str
    sources: int
    min_relevance: float
    max_new_tokens: int
    grounding: str = "strict"  # strict | off (Settings.grounding)
    languages: frozenset[str] | None = None  # what the model writes (None: any); Settings.model_languages
    shared: bool = False  # others read the answer: say so when nothing is found
    verified: VerifiedAnswers | None = None  # approved corrections, answered before retrieval


async def condense(state: AnswerState, runtime: Runtime[AnswerContext]) -> dict[str, Any]:
    """Make the question searchable on its own: a follow-up ("and for sick leave?") is searched
    together with the thread's previous question. Deterministic on purpose: a 135M-parameter model
    rewrites questions unreliably, and the previous question carries the missing subject."""
    history = state.get("history") or []
    query = state["question"]
    if history:
        query = f"{history[-1]['question']} {query}"
    return {"search_query": query}


async def verified(state: AnswerState, runtime: Runtime[AnswerContext]) -> dict[str, Any]:
    """An approved correction that answers the question is the answer (agent.verified_reply)."""
    started = time.perf_counter()
    update = await verified_reply(state["question"], runtime.context)
    update["timings"] = {**state.get("timings", {}), "verified": time.perf_counter() - started}
    if update["verified"] is not None:
        get_stream_writer()({"token": update["answer"]})
    return update


async def retrieve(state: AnswerState, runtime: Runtime[AnswerContext]) -> dict[str, Any]:
    ctx = runtime.context
    get_stream_writer()({"stage": "searching"})
    started = time.perf_counter()
    hits = await ctx.kb.search(state["search_query"], ctx.collections, ctx.groups, limit=ctx.sources * 2)
    timings = {**state.get("timings", {}), "retrieval": time.perf_counter() - started}
    return {"retrieved": [asdict(h) for h in hits], "timings": timings}


async def judge(state: AnswerState, runtime: Runtime[AnswerContext]) -> dict[str, Any]:
    """Keep passages that match the question by meaning (cosine, when the embedding model can
    read the question) or by words (share of the question's keywords they contain)."""
    ctx = runtime.context
    hits = [Hit(**h) for h in state["retrieved"]]
    if not hits:
        return {"sources": [], "status": "not_found"}
    query = state["search_query"]
    wanted = keywords(query)
    overlap = [len(wanted & keywords(f"{h.title} {h.heading} {h.text}")) / max(1, len(wanted)) for h in hits]
    relevance = overlap
    update: dict[str, Any] = {"query_vector": []}
    if ctx.kb.embedder.coverage(query) >= MIN_DENSE_COVERAGE:
        vectors = await asyncio.to_thread(ctx.kb.embedder.embed, [query, *(h.text for h in hits)])
        cosine = (vectors[1:] @ vectors[0]).tolist()
        relevance = [max(a, float(b)) for a, b in zip(overlap, cosine, strict=True)]
        update["query_vector"] = [round(float(x), 5) for x in vectors[0]]
    # Retrieval's order stands: relevance only decides what is kept.
    kept = [asdict(h) for h, r in zip(hits, relevance, strict=True) if r >= ctx.min_relevance][: ctx.sources]
    return {**update, "sources": kept, "status": "ok" if kept else "not_found"}


async def generate(state: AnswerState, runtime: Runtime[AnswerContext]) -> dict[str, Any]:
    """Draft the answer. Strict grounding: held back until :func:`ground` has checked it, and cut
    as soon as it holds what the check rejects. Off: the raw model, streamed and never cut."""
    ctx = runtime.context
    asked = language(state["question"])
    if ctx.grounding == "strict" and not _writes(ctx.languages, asked):
        # Its draft would fail the language test anyway: skip the seconds it takes to write.
        return {"messages": [], "answer": "", "unwritten": f"the model does not write {asked}"}
    sources = [Hit(**h) for h in state["sources"]]
    history = [(t["question"], t["answer"]) for t in (state.get("history") or [])[-HISTORY_TURNS:]]
    messages = build_messages(ctx.system_prompt, history, sources, state["question"])
    write = get_stream_writer()
    write({"stage": "reading", "sources": len(sources)})
    visible = ctx.grounding == "off"
    hopeless = None if visible else doomed(state["question"], sources, prompt=ctx.system_prompt)
    parts: list[str] = []
    started = time.perf_counter()
    stream = ctx.backend.stream(messages, adapter=ctx.adapter, max_new_tokens=ctx.max_new_tokens)
    async for text in stream:
        parts.append(text)
        if visible:
            write({"token": text})
        # A sentence or line just ended: the only point where the tests can see something new.
        if hopeless and _ENDS.search(text) and (why := hopeless("".join(parts))):
            log.debug("draft stopped early: %s", why)
            break
    await _close(stream)
    timings = {**state.get("timings", {}), "generation": time.perf_counter() - started}
    return {"messages": messages, "answer": "".join(parts).strip(), "timings": timings}


def _writes(languages: frozenset[str] | None, asked: str) -> bool:
    return languages is None or not asked or any(accepts(asked, lang) for lang in languages)


async def _close(stream: Any) -> None:
    """Stop a backend's stream left early (its generation thread or HTTP response ends too)."""
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()


async def ground(state: AnswerState, runtime: Runtime[AnswerContext]) -> dict[str, Any]:
    """Check the draft against its passages; show it only if it passes (strict), else the cited
    sentences that answer the question, else "not found". Citations are the passages that
    support the shown text, and nothing else."""
    ctx = runtime.context
    question, draft = state["question"], state["answer"]
    sources = [Hit(**h) for h in state["sources"]]
    started = time.perf_counter()
    if unwritten := state.get("unwritten"):
        verdict = Verdict(False, [unwritten])
    else:
        verdict = check(draft, question, sources, prompt=ctx.system_prompt, topic=state["search_query"])
    grounding: dict[str, Any] = {
        "mode": ctx.grounding,
        "passed": verdict.passed,
        "reasons": verdict.reasons,
        "fallback": None,
    }
    update: dict[str, Any] = {"generated": None if unwritten else draft, "grounding": grounding}
    if ctx.grounding == "off":  # shown as written (and already streamed); marked sources only
        update["citations"] = build_citations(cited_numbers(draft, len(sources)), question, draft, sources)
    elif verdict.passed:
        update["citations"] = build_citations(verdict.supporting, question, draft, sources)
    elif found := extractive_answer(question, sources, lang=language(question)):
        grounding["fallback"] = "extractive"
        update["answer"] = found.text
        update["citations"] = build_citations(found.supporting, question, found.text, sources, found.quotes)
    else:
        grounding["fallback"] = "not_found"
        update.update(answer=_not_found_text(state, runtime.context), citations=[], status="not_found")
    update["timings"] = {**state.get("timings", {}), "grounding": time.perf_counter() - started}
    if ctx.grounding != "off":
        get_stream_writer()({"token": update.get("answer", draft)})
    return update


def _not_found_text(state: AnswerState, ctx: AnswerContext) -> str:
    question = state["question"]
    lines = [said_in(NOT_FOUND_SHARED if ctx.shared else NOT_FOUND, question)]
    closest = {h["source"]: h["title"] for h in state["retrieved"]}  # best first, one line per document
    if closest:
        lines.append(said_in(CLOSEST, question))
        lines += [f"- {title} ({source})" for source, title in list(closest.items())[:3]]
    return "\n".join(lines)


async def not_found(state: AnswerState, runtime: Runtime[AnswerContext]) -> dict[str, Any]:
    """Say so plainly, and offer the closest passages instead of inventing an answer."""
    answer = _not_found_text(state, runtime.context)
    get_stream_writer()({"token": answer})
    return {"messages": [], "answer": answer, "citations": []}


async def finalize(state: AnswerState, runtime: Runtime[AnswerContext]) -> dict[str, Any]:
    sources = [Hit(**h) for h in state.get("sources") or []]
    return {
        "history": [Turn(question=state["question"], answer=state["answer"])],
        # The sources of this turn reached the model, or the shown answer quotes them (the
        # extractive answer, also when the model was not asked), or both.
        "restricted": any(h.restricted for h in sources),
    }


def _after_verified(state: AnswerState) -> str:
    return "retrieve" if state.get("verified") is None else "finalize"


def _route(state: AnswerState) -> str:
    return "generate" if state["status"] == "ok" else "not_found"


def build_graph() -> StateGraph[AnswerState, AnswerContext, AnswerState, AnswerState]:
    graph = StateGraph(AnswerState, context_schema=AnswerContext)
    graph.add_node("condense", condense)
    graph.add_node("verified_reply", verified)
    graph.add_node("retrieve", retrieve)
    graph.add_node("judge", judge)
    graph.add_node("generate", generate)
    graph.add_node("ground", ground)
    graph.add_node("not_found", not_found)
    graph.add_node("finalize", finalize)
    graph.add_edge(START, "condense")
    graph.add_edge("condense", "verified_reply")
    graph.add_conditional_edges("verified_reply", _after_verified, ["retrieve", "finalize"])
    graph.add_edge("retrieve", "judge")
    graph.add_conditional_edges("judge", _route, ["generate", "not_found"])
    graph.add_edge("generate", "ground")
    graph.add_edge("ground", "finalize")
    graph.add_edge("not_found", "finalize")
    graph.add_edge("finalize", END)
    return graph
