"""Preference accuracy: how often an adapter prefers the chosen answer, by DPO's implicit reward.

For a pair (x, chosen, rejected) and a policy π with reference π_ref (the base model):
``margin = [log π(chosen|x) − log π_ref(chosen|x)] − [log π(rejected|x) − log π_ref(rejected|x)]``.
The pair counts 1 when the margin is positive, ½ when it is zero (the base model itself, or a
no-op adapter, scores exactly 0.5), 0 otherwise. Log-probabilities are of the completion's
tokens after the chat template's generation prompt, as TRL tokenizes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class PreferenceScore:
    accuracy: float
    mean_margin: float
    pairs: int


def completion_logprob(
    model: Any, tokenizer: Any, prompt: list[dict[str, str]], completion: list[dict[str, str]]
) -> float:
    import torch

    prompt_ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True)
    full_ids = tokenizer.apply_chat_template([*prompt, *completion], tokenize=True)
    if hasattr(prompt_ids, "input_ids"):
        prompt_ids, full_ids = prompt_ids["input_ids"], full_ids["input_ids"]
    ids = torch.tensor([list(full_ids)], device=model.device)
    with torch.no_grad():
        logits = model(ids).logits[0, :-1].float()
    targets = ids[0, 1:]
    logprobs = torch.log_softmax(logits, dim=-1).gather(1, targets.unsqueeze(1)).squeeze(1)
    return float(logprobs[len(prompt_ids) - 1 :].sum())


def score(model: Any, tokenizer: Any, rows: Sequence[dict[str, Any]]) -> PreferenceScore:
    """``model`` is a PeftModel: its adapter is the policy, with adapters disabled the reference."""
    hits = 0.0
    margins = []
    for row in rows:
        policy = [completion_logprob(model, tokenizer, row["prompt"], row[k]) for k in ("chosen", "rejected")]
        with model.disable_adapter():
            ref = [
                completion_logprob(model, tokenizer, row["prompt"], row[k]) for k in ("chosen", "rejected")
            ]
        margin = (policy[0] - ref[0]) - (policy[1] - ref[1])
        margins.append(margin)
        hits += 1.0 if margin > 1e-6 else 0.5 if abs(margin) <= 1e-6 else 0.0
    n = len(margins)
    return PreferenceScore(hits / n if n else 0.0, sum(margins) / n if n else 0.0, n)


def score_adapter(base_model: str, adapter: Path | None, rows: Sequence[dict[str, Any]]) -> PreferenceScore:
    """Load the base model with ``adapter`` and score. None is the base model itself: its own
    reference, every margin exactly 0, so it scores 0.5 without a model being loaded."""
    if adapter is None:
        return PreferenceScore(0.5 if rows else 0.0, 0.0, len(rows))
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model)
    model: Any = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(adapter))
    model.eval()
    return score(model, tokenizer, rows)
