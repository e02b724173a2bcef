"""The answer graph: condense → retrieve → judge → generate → finalize (LangGraph).

Each node is a small async function of the state and the run's :class:`AnswerContext`. The
thread's history lives in the state and is persisted per thread by the checkpointer, so a
follow-up question in the same thread sees the earlier turns.
"""

from __future__ import annotations

import asyncio
import operator
import time
from dataclasses import asdict, dataclass
from typing import Annotated, Any, TypedDict

from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime

from agent.backends import AdapterRef, Message, ModelBackend
from agent.citations import Citation, build_citations
from agent.prompts import build_messages
from knowledge.base import MIN_DENSE_COVERAGE, KnowledgeBase
from knowledge.sparse import keywords
from knowledge.vectorstore import Hit

HISTORY_TURNS = 3  # earlier turns shown to the model; older ones stay in the checkpoint only
NOT_FOUND = "I could not find this in the documents available to you."
NOT_FOUND_SHARED = (
    "I could not find this in the documents everyone here may see. Documents shared with only "
    "some teams are used when you ask me in a direct message."
)


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
    shared: bool = False  # others read the answer: say so when nothing is found


async def condense(state: AnswerState, runtime: Runtime[AnswerContext]) -> dict[str, Any]:
    """Make the question searchable on its own: a follow-up ("and for sick leave?") is searched
    together with the thread's previous question. Deterministic on purpose: a 135M-parameter model
    rewrites questions unreliably, and the previous question carries the missing subject."""
    history = state.get("history") or []
    query = state["question"]
    if history:
        query = f"{history[-1]['question']} {query}"
    return {"search_query": query}


async def retrieve(state: AnswerState, runtime: Runtime[AnswerContext]) -> dict[str, Any]:
    ctx = runtime.context
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
    ctx = runtime.context
    sources = [Hit(**h) for h in state["sources"]]
    history = [(t["question"], t["answer"]) for t in (state.get("history") or [])[-HISTORY_TURNS:]]
    messages = build_messages(ctx.system_prompt, history, sources, state["question"])
    write = get_stream_writer()
    parts: list[str] = []
    started = time.perf_counter()
    async for text in ctx.backend.stream(messages, adapter=ctx.adapter, max_new_tokens=ctx.max_new_tokens):
        parts.append(text)
        write({"token": text})
    timings = {**state.get("timings", {}), "generation": time.perf_counter() - started}
    return {"messages": messages, "answer": "".join(parts).strip(), "timings": timings}


async def not_found(state: AnswerState, runtime: Runtime[AnswerContext]) -> dict[str, Any]:
    """Say so plainly, and offer the closest passages instead of inventing an answer."""
    closest = [Hit(**h) for h in state["retrieved"][:3]]
    lines = [NOT_FOUND_SHARED if runtime.context.shared else NOT_FOUND]
    if closest:
        lines.append("The closest passages I found:")
        lines += [f"- {h.title} ({h.source})" for h in closest]
    answer = "\n".join(lines)
    get_stream_writer()({"token": answer})
    return {"messages": [], "answer": answer}


async def finalize(state: AnswerState, runtime: Runtime[AnswerContext]) -> dict[str, Any]:
    sources = [Hit(**h) for h in state.get("sources") or []]
    citations = (
        build_citations(state["answer"], state["question"], sources) if state["status"] == "ok" else []
    )
    return {
        "citations": citations,
        "history": [Turn(question=state["question"], answer=state["answer"])],
        "restricted": state["status"] == "ok" and any(h.restricted for h in sources),
    }


def _route(state: AnswerState) -> str:
    return "generate" if state["status"] == "ok" else "not_found"


def build_graph() -> StateGraph[AnswerState, AnswerContext, AnswerState, AnswerState]:
    graph = StateGraph(AnswerState, context_schema=AnswerContext)
    graph.add_node("condense", condense)
    graph.add_node("retrieve", retrieve)
    graph.add_node("judge", judge)
    graph.add_node("generate", generate)
    graph.add_node("not_found", not_found)
    graph.add_node("finalize", finalize)
    graph.add_edge(START, "condense")
    graph.add_edge("condense", "retrieve")
    graph.add_edge("retrieve", "judge")
    graph.add_conditional_edges("judge", _route, ["generate", "not_found"])
    graph.add_edge("generate", "finalize")
    graph.add_edge("not_found", "finalize")
    graph.add_edge("finalize", END)
    return graph
