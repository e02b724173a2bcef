"""Pairs from the grounding check: a shown extractive answer rated good beats the model's draft
that the check rejected.

When the check rejects a draft in strict mode, the person sees a cited quote from the passages
(``grounding["fallback"] == "extractive"``) instead; the draft is kept in ``Answer.generated``.
A 👍 on the quote says the grounded text was the better reply to the same prompt, so the pair is
``prompt`` = the messages the model saw, ``chosen`` = the shown quote, ``rejected`` = the draft.
The draft is only ever a rejected side: a 👎 on the quote makes no pair with it. Answers logged
before the check (``generated`` and ``grounding`` NULL) never qualify.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from kbot.db.models import Answer

RULE = "grounding"  # the pairs' rule in Export.made (and so in its summary and the run's counts)


def rejected_draft(answer: Answer) -> str | None:
    """The model's draft that the grounding check rejected and replaced by the shown extractive
    answer; None when the shown text is the model's own, or there is no usable draft."""
    grounding = answer.grounding
    if not isinstance(grounding, dict):
        return None
    if grounding.get("fallback") != "extractive" or grounding.get("passed") is not False:
        return None
    draft = answer.generated
    if draft is None or not draft.strip() or draft.strip() == answer.answer.strip():
        return None
    return draft


def grounding_pairs(good: Iterable[Answer]) -> list[tuple[str, dict[str, Any], str, str]]:
    """(rule, row, chosen id, rejected id) for each answer rated good whose draft was rejected."""
    pairs: list[tuple[str, dict[str, Any], str, str]] = []
    for a in sorted(good, key=lambda a: (a.created_at, a.id)):
        draft = rejected_draft(a)
        if draft is None:
            continue
        row = {
            "prompt": a.messages,
            "chosen": [{"role": "assistant", "content": a.answer}],
            "rejected": [{"role": "assistant", "content": draft}],
        }
        pairs.append((RULE, row, a.id, a.id))
    return pairs
