"""Feedback → training rows in TRL's formats (conversational), with a summary of what was dropped.

Formats (exactly what TRL's trainers load; every ``prompt`` is the exact message list the model
saw, from the answer log, so training sees what serving saw):

- DPO (``DPOTrainer``): ``{"prompt": [messages], "chosen": [{"role": "assistant", "content": …}],
  "rejected": [{"role": "assistant", "content": …}]}``
- KTO (``KTOTrainer``): ``{"prompt": [messages], "completion": [{"role": "assistant", …}],
  "label": bool}`` — rated answers that are in no pair.
- SFT (``SFTTrainer``, OpenAI chat JSONL): ``{"messages": [messages…, {"role": "assistant", …}]}``
  — corrections, and answers rated good.

Corrections count only once a reviewer approved them (``finetune.review``; ``KBOT_CORRECTIONS=trust``
approves on arrival), with the text approved (the reviewer's edit, else the correction as written);
pending and rejected ones are counted under the drops, and so is one approved for some groups
only (its ACL scope is not everyone's). A correction of a "not found" answer (no model text to
reject: no pair) becomes an SFT row whose prompt is what the model sees when that question is
answered from the verified answer: ``agent.prompts.build_messages`` with
``ExportOptions.system_prompt``, no history, and one source titled ``verified answer, <date
approved>`` that holds the approved text (``agent.verified_reply.as_hit``, as served).

An answer's text is always the one people saw (``Answer.answer``). Where the grounding check
rejected the model's draft and showed a cited extractive answer instead, a 👍 on it also pairs
the shown answer (chosen) with the draft (rejected): ``finetune.grounding_pairs``, rule
``grounding``. A rejected draft is never a chosen side, nor a KTO or SFT completion.

A preferred text must hold to its sources' numbers (:func:`foreign_numbers`): a 👍 answer that
states a quantity nothing in its prompt holds is no chosen side, KTO or SFT row (dropped,
``UNSUPPORTED_UP``), and a correction that does is trained as an SFT row from its verified answer
(``OVERRULED_RULE``), never as a pair against the answer it corrects.

An answer's rating is the sum of its live votes, after each person's votes beyond
``max_votes_per_user`` (their oldest first kept) are set aside, so that one person cannot steer
the model; it is *good* at ``+min_votes`` or more and *bad* at ``-min_votes`` or less. Answers
kbot gave without the model (``not_found``, errors) and evaluation runs are never exported (but
for corrections of ``not_found`` answers, above), and
neither are answers whose prompt held restricted text (a document ingested with ``--acl``, as a
source or in the thread's history): an adapter answers everyone, so it must not learn what only
some may read. Restricted means: marked so when answered, or a source it used is restricted now
(its ACL was tightened since); answers logged before kbot marked them count as restricted when
any passage they retrieved is restricted or no longer known.
Feedback from anonymous web visitors (platform ``web``, person ``anon-…``: a cookie anyone can
drop for a new one) is left out — counted under the drops — unless ``train_on_anonymous``.
Output is deterministic: rows are sorted by a hash of their content.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agent.numbers import Quantity, fold, quantities
from agent.prompts import build_messages
from agent.verified_reply import as_hit
from finetune.feedback_load import (
    ANONYMOUS_PREFIX,
    ExportOptions,
    Rated,
    corrected_text,
    is_anonymous,
    load,
    not_found,
)
from finetune.grounding_pairs import grounding_pairs
from kbot.db import Database
from kbot.db.models import Answer, Correction
from knowledge.verified import VerifiedAnswer

# Loading lives in finetune.feedback_load; its public names are this module's too.
__all__ = [
    "ANONYMOUS_PREFIX",
    "FORMATS",
    "OVERRULED_RULE",
    "UNSUPPORTED_UP",
    "VERIFIED_RULE",
    "Embed",
    "Export",
    "ExportOptions",
    "Rated",
    "build",
    "export_feedback",
    "foreign_numbers",
    "is_anonymous",
    "load",
    "normalise",
    "verified_prompt",
]
Embed = Callable[[Sequence[str]], np.ndarray]
FORMATS = ("dpo", "kto", "sft")
VERIFIED_RULE = "correction of a not-found answer (SFT)"  # Export.made's key for those rows
# Export.made's key for a correction that states a number its answer's sources do not hold.
OVERRULED_RULE = "correction overruling its sources (SFT from its verified answer, no pair)"
UNSUPPORTED_UP = "👍 on an answer that states a number its sources do not hold"  # Export.dropped's


@dataclass
class Export:
    dpo: list[dict[str, Any]] = field(default_factory=list)
    kto: list[dict[str, Any]] = field(default_factory=list)
    sft: list[dict[str, Any]] = field(default_factory=list)
    made: Counter[str] = field(default_factory=Counter)  # pairs / rows by the rule that made them
    dropped: Counter[str] = field(default_factory=Counter)  # by reason

    def rows(self, fmt: str) -> list[dict[str, Any]]:
        return {"dpo": self.dpo, "kto": self.kto, "sft": self.sft}[fmt]

    def summary(self) -> str:
        lines = [f"DPO pairs: {len(self.dpo)}, KTO rows: {len(self.kto)}, SFT rows: {len(self.sft)}"]
        lines += [f"  made by {rule}: {n}" for rule, n in sorted(self.made.items())]
        lines += [f"  dropped, {reason}: {n}" for reason, n in sorted(self.dropped.items())]
        return "\n".join(lines)


def normalise(question: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", question).casefold().split())


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def _key(row: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(row, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def verified_prompt(answer: Answer, correction: Correction, system_prompt: str) -> list[dict[str, str]]:
    """What the model sees when ``answer``'s question is answered from ``correction``, approved:
    the answer path's own prompt, with the verified answer as its one source."""
    approved = VerifiedAnswer(
        correction_id=correction.id,
        question=answer.question,
        text=corrected_text(correction),
        collections=list(answer.collections),
        acl=list(correction.acl or ()),
        approved_at=correction.reviewed_at or correction.updated_at,
    )
    source = as_hit(approved, list(answer.collections))  # as the verified reply shows it
    # As the answer log keeps prompts (agent.answering): role and content only.
    return [
        {"role": m["role"], "content": m["content"]}
        for m in build_messages(system_prompt, [], [source], answer.question)
    ]


def foreign_numbers(text: str, prompt: list[dict[str, str]]) -> list[Quantity]:
    """The quantities ``text`` states that nothing the model was shown (``prompt``: sources,
    question, history) holds, in any notation (:mod:`agent.numbers`).

    Why it matters: a preferred text teaches the model to say what it says *given that prompt*.
    A number the prompt does not hold teaches it to contradict or outrun its sources — the one
    habit a grounded bot must not learn, whoever voted for it. Poisoned or mistaken feedback
    mostly looks like this (the right sentence, one number changed)."""
    shown = quantities(fold("\n".join(m["content"] for m in prompt if m["role"] != "assistant")))
    return [q for q in quantities(fold(text)) if not any(q.matches(s) for s in shown)]


def build(
    rated: dict[str, Rated],
    corrections: list[Correction],
    options: ExportOptions,
    embed: Embed | None,
    embed_model: str = "",
) -> Export:
    out = Export()
    verified, corrected, overruled = _split(rated, corrections)
    good = {i: r for i, r in rated.items() if r.votes and r.score >= options.min_votes}
    doubtful = {i for i, r in good.items() if foreign_numbers(r.answer.answer, r.answer.messages)}
    if doubtful:
        out.dropped[UNSUPPORTED_UP] += len(doubtful)
    good = {i: r for i, r in good.items() if i not in doubtful}
    bad = {i: r for i, r in rated.items() if r.votes and r.score <= -options.min_votes}
    out.dropped["answer whose votes cancel out or are too few"] += sum(
        1 for r in rated.values() if r.votes and -options.min_votes < r.score < options.min_votes
    )
    pairs: list[Pair] = []

    # Rule 1: a correction is better than the answer it corrects.
    for c in corrected:
        a = rated[c.answer_id].answer
        row = {
            "prompt": a.messages,
            "chosen": _assistant(corrected_text(c)),
            "rejected": _assistant(a.answer),
        }
        pairs.append(("correction", row, f"correction:{c.id}", a.id))

    same = _same_question_groups(
        [r.answer for r in (good | bad).values()], options.similarity, embed, embed_model
    )
    pairs += _vote_pairs(same, set(good))
    # Rule 4: a shown extractive answer rated good beats the draft the grounding check rejected.
    pairs += grounding_pairs(r.answer for r in good.values())
    _finish_pairs(out, pairs)

    paired = {i for _, _, a, b in pairs for i in (a, b)}
    for answer_id, r in sorted(rated.items()):
        if r.votes and answer_id not in paired and answer_id in good | bad:
            out.kto.append(
                {
                    "prompt": r.answer.messages,
                    "completion": _assistant(r.answer.answer),
                    "label": answer_id in good,
                }
            )
    out.made["unpaired vote (KTO)"] = len(out.kto)
    for c in corrected:
        out.sft.append({"messages": [*rated[c.answer_id].answer.messages, *_assistant(corrected_text(c))]})
    for c, a in verified + overruled:
        out.sft.append(
            {"messages": [*verified_prompt(a, c, options.system_prompt), *_assistant(corrected_text(c))]}
        )
    if verified:
        out.made[VERIFIED_RULE] = len(verified)
    if overruled:
        out.made[OVERRULED_RULE] = len(overruled)
    for answer_id in sorted(good):
        a = good[answer_id].answer
        out.sft.append({"messages": [*a.messages, *_assistant(a.answer)]})
    out.made["SFT rows"] = len(out.sft)
    for rows in (out.dpo, out.kto, out.sft):
        rows.sort(key=_key)
    return out


Pair = tuple[str, dict[str, Any], str, str]  # (rule, row, chosen id, rejected id)
Corrected = list[tuple[Correction, Answer]]


def _split(
    rated: dict[str, Rated], corrections: list[Correction]
) -> tuple[Corrected, list[Correction], Corrected]:
    """(corrections of "not found" answers, the ones that pair with their answer, the ones that
    overrule their answer's sources)."""
    verified: Corrected = []
    corrected: list[Correction] = []
    overruled: Corrected = []
    for c in corrections:
        a = rated[c.answer_id].answer
        if not_found(a):  # the model wrote nothing there, so there is no pair
            verified.append((c, a))
        elif foreign_numbers(corrected_text(c), a.messages):
            # It may be right (the document is out of date) or poison; either way the model must
            # not learn to overrule its sources. It is served, and trained, as a verified answer.
            overruled.append((c, a))
        else:
            corrected.append(c)
    return verified, corrected, overruled


def _vote_pairs(groups: list[list[Answer]], good: set[str]) -> list[Pair]:
    pairs: list[Pair] = []
    for members in groups:
        # Pairs only form inside a context (rule 2) or a thread (rule 3): bucket first, so a big
        # group of similar questions never costs a full cross product.
        by_context: dict[Any, tuple[list[Answer], list[Answer]]] = defaultdict(lambda: ([], []))
        by_thread: dict[Any, tuple[list[Answer], list[Answer]]] = defaultdict(lambda: ([], []))
        for a in members:
            side = 0 if a.id in good else 1
            by_context[_context(a)][side].append(a)
            by_thread[_thread(a)][side].append(a)
        for ups, downs in by_context.values():
            for up in ups:
                for down in downs:
                    # Rule 2: 👍 and 👎 answers to the same question in the same context (same
                    # collections, same retrieved passages): the prompt is the 👍 answer's.
                    row = {
                        "prompt": up.messages,
                        "chosen": _assistant(up.answer),
                        "rejected": _assistant(down.answer),
                    }
                    pairs.append(("same question, opposite votes", row, up.id, down.id))
        for ups, downs in by_thread.values():
            for up in ups:
                for down in downs:
                    # Rule 3: a 👎 answer, then a 👍 answer to the same question later in the same
                    # thread (the asker tried again) with other passages: the prompt is the 👎
                    # answer's, which has no trace of the failed attempt in its history.
                    if _context(up) != _context(down) and up.created_at > down.created_at:
                        row = {
                            "prompt": down.messages,
                            "chosen": _assistant(up.answer),
                            "rejected": _assistant(down.answer),
                        }
                        pairs.append(("regenerated in the thread", row, up.id, down.id))
    return pairs


def _finish_pairs(out: Export, pairs: list[tuple[str, dict[str, Any], str, str]]) -> None:
    seen: dict[str, str] = {}
    by_direction: dict[tuple[str, str, str], str] = {}
    for rule, row, _, _ in pairs:
        chosen, rejected = row["chosen"][0]["content"], row["rejected"][0]["content"]
        if chosen.strip() == rejected.strip():
            out.dropped["chosen and rejected are the same text"] += 1
            continue
        key = _key(row)
        if key in seen:
            out.dropped["duplicate pair"] += 1
            continue
        prompt = json.dumps(row["prompt"], sort_keys=True, ensure_ascii=False)
        seen[key] = rule
        by_direction[(prompt, chosen, rejected)] = key
    contradicted = {
        k for (p, c, r), k in by_direction.items() if (p, r, c) in by_direction
    }  # people disagree: both directions go
    out.dropped["contradictory pair"] += len(contradicted)
    kept = {k for k in seen if k not in contradicted}
    for rule, row, _, _ in pairs:
        key = _key(row)
        if key in kept:
            kept.discard(key)
            out.dpo.append(row)
            out.made[rule] += 1


def _context(answer: Answer) -> tuple[tuple[str, ...], tuple[str, ...]]:
    chunks = tuple(sorted(str(r.get("chunk_id")) for r in answer.retrieved))
    return tuple(sorted(answer.collections)), chunks


def _thread(answer: Answer) -> tuple[str, str, str]:
    return (answer.platform, answer.channel, answer.thread or answer.id)


def _same_question_groups(
    answers: list[Answer], threshold: float, embed: Embed | None, embed_model: str = ""
) -> list[list[Answer]]:
    """Answers grouped by question: equal after normalising, or (with ``embed``) cosine ≥ threshold.

    A question's vector comes from the answer log when the answer path recorded one with the
    same model (``embed_model``); only the others are embedded here.
    """
    by_text: dict[str, list[Answer]] = defaultdict(list)
    for a in sorted(answers, key=lambda a: (a.created_at, a.id)):
        by_text[normalise(a.question)].append(a)
    texts = sorted(by_text)
    if embed is None or len(texts) < 2:
        return [by_text[t] for t in texts]
    vectors = _question_vectors(texts, by_text, embed, embed_model)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True) + 1e-12
    parent = list(range(len(texts)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(len(texts)):  # blocks keep memory at O(block x n)
        sims = vectors[i + 1 :] @ vectors[i]
        for j in np.nonzero(sims >= threshold)[0]:
            parent[root(i + 1 + int(j))] = root(i)
    groups: dict[int, list[Answer]] = defaultdict(list)
    for i, t in enumerate(texts):
        groups[root(i)].extend(by_text[t])
    return [groups[k] for k in sorted(groups)]


def _question_vectors(
    texts: list[str], by_text: dict[str, list[Answer]], embed: Embed, embed_model: str
) -> np.ndarray:
    known: dict[str, list[float]] = {}
    for text in texts:
        for a in by_text[text]:
            if embed_model and a.embedding_model == embed_model and a.question_vector:
                known[text] = a.question_vector
                break
    missing = [t for t in texts if t not in known]
    fresh = dict(zip(missing, np.asarray(embed(missing), dtype=np.float32), strict=True)) if missing else {}
    return np.asarray([known[t] if t in known else fresh[t] for t in texts], dtype=np.float32)


async def export_feedback(
    db: Database, options: ExportOptions, embed: Embed | None = None, embed_model: str = ""
) -> Export:
    """Export with ``embed`` (and its model's name, to reuse question vectors from the answer log)."""
    rated, corrections, dropped = await load(db, options)
    out = build(rated, corrections, options, embed, embed_model)
    out.dropped.update(dropped)
    return out
