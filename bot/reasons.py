"""Why an answer was 👎: the reasons every platform's dialog offers, and the comment they make.

One list for Slack's modal and Teams' feedback dialog, so the review queue reads the same words
whichever platform a vote came from. The values never change; the labels are what is stored.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["MAX_DETAIL", "REASONS", "comment"]

MAX_DETAIL = 2000  # the dialogs' text-box limit; a longer forged value is cut to it
# value → label, in the order they are shown and stored.
REASONS = {
    "wrong_facts": "Wrong or outdated facts",
    "off_topic": "Didn't answer my question",
    "missing_info": "Missing information",
    "wrong_sources": "Wrong sources",
    "other": "Other",
}


def comment(chosen: Iterable[str], detail: str) -> str:
    """``"Wrong or outdated facts; Missing information; the policy changed in 2026"``: kbot's own
    reason values only (anything else is dropped), each once, in :data:`REASONS`' order, then the
    person's words cut to :data:`MAX_DETAIL`; "" when nothing was chosen or written."""
    picked = set(chosen)
    labels = [label for value, label in REASONS.items() if value in picked]
    detail = detail.strip()[:MAX_DETAIL]
    return "; ".join([*labels, *([detail] if detail else [])])
