"""The verified reply: an approved correction answers its question before retrieval runs.

:func:`verified_reply` looks for a verified answer (:mod:`knowledge.verified`) to the question
as asked — a follow-up is matched on its own words, not on the condensed search query, since a
verified answer is the reply to one question, and "and for sick leave?" joined to the previous
question is a question nobody asked. It is found only in the asked collections and only if the
asker's groups may read it, the rules retrieval applies to documents.

The text is shown as approved, with one citation, "verified answer, <approval date>". It still
passes through the grounding check, with itself as its only source, so the one gate every shown
text passes stays the same: a verified answer in the wrong language or a degenerate one is not
shown (the normal answer path runs instead). The model is not asked: ``messages`` stays empty,
which also keeps the reply out of the feedback export (it trains only on answers with a prompt).
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from agent.citations import Citation
from agent.grounding import check
from knowledge.vectorstore import Hit
from knowledge.verified import VerifiedAnswer

if TYPE_CHECKING:
    from agent.graph import AnswerContext

log = logging.getLogger(__name__)


def citation_title(answer: VerifiedAnswer) -> str:
    return f"verified answer, {answer.approved_at.date().isoformat()}"


def as_hit(answer: VerifiedAnswer, collections: list[str]) -> Hit:
    """The verified answer as the one passage of its reply (``Hit.restricted`` reads its ACL)."""
    asked = [c for c in answer.collections if c in collections]
    return Hit(
        chunk_id=answer.point_id,
        score=answer.score,
        collection=(asked or answer.collections)[0],
        source=answer.source,
        title=citation_title(answer),
        heading=answer.question,
        text=answer.text,
        acl=tuple(answer.acl),
    )


async def verified_reply(question: str, ctx: AnswerContext) -> dict[str, Any]:
    """The state update of a verified reply, or ``{"verified": None}`` to answer as usual."""
    # The evaluation gate (grounding "off") measures the model: a verified text would hide it.
    if ctx.verified is None or ctx.grounding == "off":
        return {"verified": None}
    found = await ctx.verified.match(question, ctx.collections, ctx.groups)
    if found is None:
        return {"verified": None}
    hit = as_hit(found, ctx.collections)
    verdict = check(found.text, question, [hit], prompt=ctx.system_prompt)
    if not verdict.passed:
        log.info("verified answer %s not shown: %s", found.correction_id, "; ".join(verdict.reasons))
        return {"verified": None}
    citation = Citation(
        n=1,
        source=hit.source,
        title=hit.title,
        # Under the citation: the question the answer was approved for, so the asker can tell.
        quote=found.question,
        chunk_id=hit.chunk_id,
    )
    passage = asdict(hit)
    return {
        "verified": found.correction_id,
        "search_query": question,
        "retrieved": [{**passage, "verified": found.correction_id}],
        "sources": [passage],
        "messages": [],
        "answer": found.text,
        "citations": [citation],
        "status": "ok",
        "generated": None,
        "query_vector": [],  # the checkpoint still holds the previous turn's
        "grounding": {
            "mode": ctx.grounding,
            "passed": True,
            "reasons": [],
            "fallback": None,
            "verified": found.correction_id,
            "score": round(found.score, 4),
        },
    }
