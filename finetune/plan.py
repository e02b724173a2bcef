"""What one night trains on, and how: new feedback, a replay sample of older rows, held-out pairs.

- **New** rows come from feedback given since the last promoted run (everything before that went
  into the active adapter, or was refused with the candidate that learned it).
- **Replay**: a deterministic sample of older rows (``replay`` × the new rows of each kind) rides
  along, so a night of narrow feedback does not make the adapter forget the rest. Whether it
  forgot anyway is the gate's to measure (golden facts), not assumed.
- **Held out**: a deterministic share of the new pairs, chosen by *question* (the prompt's last
  user turn, normalised), is kept for the gate. Nothing about a held-out question reaches any
  training step of the night: no row on the same question, and no row whose chosen, rejected or
  completion text is a held-out pair's (a 👍 answer is also an SFT row and a KTO row).
- **Quarantine**: a night whose candidate was refused for making things *worse* (the golden
  facts, or any metric beyond its tolerance) leaves the keys of its rows in its run record; later
  nights train on none of them, new or replayed. Poisoned feedback would otherwise stay in the
  window "since the last promoted run" and sink every later night too. A night refused only for
  not being better keeps its feedback in the window: it counts again with the next night's.
- **The plan** (which trainers, in which order) follows what the night holds: SFT first when
  people wrote approved corrections; then DPO when there are enough pairs, else KTO when there
  are enough unpaired votes of both kinds; SFT alone when only corrections came in. ``why`` says
  it in a sentence for the run record.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from finetune.export import Export, normalise

Row = dict[str, Any]


@dataclass
class Night:
    dpo: list[Row] = field(default_factory=list)
    kto: list[Row] = field(default_factory=list)
    sft: list[Row] = field(default_factory=list)
    held: list[Row] = field(default_factory=list)  # preference pairs for the gate, never trained on
    new_keys: list[str] = field(default_factory=list)  # the night's new rows: quarantined if it harms
    steps: list[str] = field(default_factory=list)  # e.g. ["sft", "dpo"]; empty: nothing to train
    why: str = ""
    counts: dict[str, Any] = field(default_factory=dict)


def question_of(row: Row) -> str:
    """The question a row is about: its prompt's last user turn (the ``Question:`` line when the
    turn carries the sources), normalised."""
    messages = row.get("prompt") or row.get("messages", [])[:-1]
    users = [m["content"] for m in messages if m.get("role") == "user"]
    last = users[-1] if users else ""
    return normalise(last.rsplit("\nQuestion:", 1)[-1])


def texts_of(row: Row) -> set[str]:
    """Every answer text a row trains on or against."""
    found: set[str] = set()
    for key in ("chosen", "rejected", "completion"):
        found.update(m["content"].strip() for m in row.get(key, []))
    if row.get("messages"):
        found.add(row["messages"][-1]["content"].strip())
    return found


def _bucket(text: str, salt: str = "") -> float:
    digest = hashlib.sha256(f"{salt}\0{text}".encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32


def row_key(row: Row) -> str:
    return hashlib.sha256(json.dumps(row, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def _replay(new: list[Row], everything: list[Row], share: float, salt: str) -> list[Row]:
    fresh = {row_key(r) for r in new}
    older = sorted(
        (r for r in everything if row_key(r) not in fresh), key=lambda r: _bucket(row_key(r), salt)
    )
    return older[: round(share * len(new))]


def _without(export: Export, keys: frozenset[str]) -> Export:
    if not keys:
        return export
    kept = Export(made=export.made, dropped=export.dropped.copy())
    for kind in ("dpo", "kto", "sft"):
        rows = export.rows(kind)
        kept.rows(kind).extend(r for r in rows if row_key(r) not in keys)
        if len(kept.rows(kind)) < len(rows):
            kept.dropped[f"{kind} row of a quarantined night"] += len(rows) - len(kept.rows(kind))
    return kept


def _corrections(made: dict[str, int]) -> int:
    return sum(n for rule, n in made.items() if "correction" in rule and rule != "SFT rows")


def plan_night(
    new: Export,
    everything: Export | None,
    *,
    holdout: float,
    replay: float,
    min_pairs: int,
    seed: int = 0,
    quarantined: frozenset[str] = frozenset(),
) -> Night:
    """The night's rows and plan from the export of new feedback and (for replay) of all of it,
    leaving out the ``quarantined`` rows (by :func:`row_key`)."""
    new = _without(new, quarantined)
    everything = _without(everything, quarantined) if everything is not None else None
    held_questions = {question_of(r) for r in new.dpo if _bucket(question_of(r)) < holdout}
    held = [r for r in new.dpo if question_of(r) in held_questions]
    held_texts = set().union(*(texts_of(r) for r in held)) if held else set()

    def trainable(rows: list[Row]) -> list[Row]:
        return [r for r in rows if question_of(r) not in held_questions and not texts_of(r) & held_texts]

    salt = str(seed)
    night = Night(held=held, new_keys=sorted({row_key(r) for r in new.dpo + new.kto + new.sft}))
    kinds = {"dpo": new.dpo, "kto": new.kto, "sft": new.sft}
    for kind, rows in kinds.items():
        fresh = trainable(rows)
        older = trainable(_replay(fresh, everything.rows(kind), replay, salt)) if everything else []
        setattr(night, kind, fresh + older)
        night.counts[f"{kind}_new"], night.counts[f"{kind}_replay"] = len(fresh), len(older)
    night.counts["held_out_pairs"] = len(held)
    night.counts["held_out_questions"] = len(held_questions)
    _choose(night, new, min_pairs)
    return night


def _choose(night: Night, new: Export, min_pairs: int) -> None:
    corrections = _corrections(dict(new.made))
    pairs, unpaired = night.counts["dpo_new"], night.counts["kto_new"]
    labels = {bool(r["label"]) for r in night.kto}
    reasons = []
    if corrections and night.sft:
        night.steps.append("sft")
        reasons.append(f"SFT on {len(night.sft)} rows, as people wrote {corrections} approved correction(s)")
    if pairs >= min_pairs:
        night.steps.append("dpo")
        reasons.append(f"DPO on {len(night.dpo)} pairs ({pairs} new, at least {min_pairs})")
    elif unpaired >= min_pairs and labels == {True, False}:
        night.steps.append("kto")
        reasons.append(
            f"KTO on {len(night.kto)} unpaired votes ({unpaired} new), as only {pairs} new pairs "
            f"formed (DPO needs {min_pairs})"
        )
    if night.steps:
        night.why = "; then ".join(reasons)
    else:
        night.why = (
            f"too little feedback: {pairs} pairs and {unpaired} unpaired votes new since the last "
            f"promoted run (need {min_pairs} of either, the votes both 👍 and 👎), and no approved correction"
        )
