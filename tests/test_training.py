"""Training with the real bundled SmolLM2 on CPU: votes from Slack and Teams become TRL rows that
DPOTrainer loads, and DPO really learns a preference (held-out accuracy, changed LoRA weights)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from finetune.export import ExportOptions, export_feedback
from finetune.preference import PreferenceScore, score, score_adapter
from finetune.train import TrainConfig, TrainingError, train_dpo, train_sft
from kbot.db.models import AnswerMessage
from knowledge.embeddings import Embedder
from tests.fake_slack import wait_until
from tests.slack_env import mention

pytestmark = pytest.mark.slow

FACTS = [
    ("annual leave", "Full-time employees receive 20 days of paid annual leave per year."),
    ("sick leave", "Up to 10 days of paid sick leave per year."),
    ("parental leave", "Parents receive 16 weeks of paid parental leave."),
    ("meal allowance", "The daily meal allowance when travelling is 45 euros."),
    ("hotel limit", "Hotels may cost up to 150 euros per night."),
    ("lost laptops", "Report a lost laptop to IT security within 24 hours."),
    ("passwords", "Passwords must have at least 14 characters."),
    ("remote work", "Employees may work remotely up to 3 days a week."),
    ("training budget", "Each employee has a training budget of 1,500 euros per year."),
    ("overtime", "Overtime is paid at 150 percent of the hourly rate."),
    ("probation", "The probation period lasts 6 months."),
    ("notice period", "The notice period is 2 months after probation."),
    ("bike allowance", "Cycling to work earns 0.25 euros per kilometre."),
    ("phone plans", "Company phones include 20 GB of data per month."),
    ("wedding leave", "Employees receive 8 days of leave for their wedding."),
    ("bereavement leave", "Bereavement leave is 5 days for close family."),
]


def cite_pairs(topics: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """A feedback history where people liked answers that cite their source and disliked the same
    answer without the citation."""
    rows = []
    for topic, fact in topics:
        for question in (
            f"What is the rule for {topic}?",
            f"Tell me about {topic}.",
            f"How does {topic} work?",
        ):
            prompt = [
                {"role": "system", "content": "Answer from the numbered sources and cite them like [1]."},
                {"role": "user", "content": f'Sources:\n[1] Handbook: "{fact}"\n\nQuestion: {question}'},
            ]
            rows.append(
                {
                    "prompt": prompt,
                    "chosen": [{"role": "assistant", "content": f"{fact} [1]"}],
                    "rejected": [{"role": "assistant", "content": fact}],
                }
            )
    return rows


def test_dpo_learns_a_preference_that_generalises(base_model_dir: str, tmp_path: Path) -> None:
    train, held_out = cite_pairs(FACTS[:12]), cite_pairs(FACTS[12:])
    result = train_dpo(
        train,
        base_model=base_model_dir,
        out=tmp_path / "a",
        config=TrainConfig(steps=10, max_length=192),
        init_adapter=None,
    )
    assert result.steps == 10 and result.losses[-1] < result.losses[0]
    log = json.loads((tmp_path / "a" / "training_log.json").read_text())
    assert log["kind"] == "dpo" and log["config"]["seed"] == 0
    # LoRA B matrices start at zero: non-zero now means the weights really changed.
    from safetensors.torch import load_file

    weights = load_file(str(tmp_path / "a" / "adapter_model.safetensors"))
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in weights.items())

    trained = score_adapter(base_model_dir, result.path, held_out)
    # The base model is its own reference: indifferent by construction, so it is not even loaded
    # for it — the shortcut is what scoring it gives, every margin exactly zero.
    assert score_adapter(base_model_dir, None, held_out) == PreferenceScore(0.5, 0.0, len(held_out))
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    as_policy = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base_model_dir), LoraConfig(r=1, target_modules=["q_proj"])
    ).eval()
    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    assert score(as_policy, tokenizer, held_out[:2]) == PreferenceScore(0.5, 0.0, 2)
    assert trained.accuracy >= 0.75, trained  # on questions about topics it never trained on
    assert trained.mean_margin > 0


def test_sft_trains_on_hand_written_chat_rows(base_model_dir: str, tmp_path: Path) -> None:
    rows = [
        {"messages": [{"role": "user", "content": f"What is {t}?"}, {"role": "assistant", "content": f}]}
        for t, f in FACTS[:4]
    ]
    result = train_sft(
        rows,
        base_model=base_model_dir,
        out=tmp_path / "s",
        config=TrainConfig(steps=2, max_length=128),
        init_adapter=None,
    )
    assert result.steps == 2 and (tmp_path / "s" / "adapter_config.json").is_file()
    with pytest.raises(TrainingError, match="Row 1: messages must be a list"):
        train_sft(
            [{"messages": "hi"}],
            base_model=base_model_dir,
            out=tmp_path / "x",
            config=TrainConfig(steps=1),
            init_adapter=None,
        )


async def test_slack_and_teams_votes_become_rows_dpo_trainer_loads(
    tmp_path: Path, embedder: Embedder, base_model_dir: str
) -> None:
    from tests.test_teams import _feedback, teams_env

    async with teams_env(tmp_path, embedder) as teams:
        env = teams.env
        # Slack: the same question answered twice in different threads, once well and once badly.
        for text, ts in (
            ("Sick leave is 10 days per year [1].", "1700000000.000001"),
            ("I am not sure.", "1700000000.000002"),
        ):
            env.model.answer = text
            done = env.stats["answered"] + 1
            await env.event(mention("How many days of sick leave do I get?", ts=ts))
            await wait_until(lambda done=done: env.stats["answered"] == done)  # type: ignore[misc]
        good, bad = sorted(
            await teams.rows(__import__("kbot.db.models", fromlist=["Answer"]).Answer),
            key=lambda a: a.created_at,
        )
        votes = env.runtime.service.votes
        await votes.vote(answer_id=good.id, platform="slack", voter="U2", value=1, origin="button")
        await votes.vote(answer_id=bad.id, platform="slack", voter="U3", value=-1, origin="reaction")
        # Teams: a 👎 with a comment through the feedback invoke, and a correction.
        env.model.answer = "Ask your manager."
        await teams.post(teams.activity(text="How many days of sick leave do I get?"))
        await wait_until(lambda: env.stats["answered"] == 3)
        teams_answer = next(m for m in await teams.rows(AnswerMessage) if m.platform == "teams")
        response = await teams.post(
            _feedback(teams, teams_answer.message_id, "dislike", "Wrong, it is 10 days.", "aad-x")
        )
        assert response.status == 200
        await votes.correct(
            answer_id=teams_answer.answer_id,
            platform="teams",
            author="aad-x",
            text="Up to 10 days of paid sick leave per year [1].",
        )

        result = await export_feedback(env.runtime.service.ledger._db, ExportOptions(), embed=embedder.embed)

    assert result.made["correction"] == 1 and result.made["same question, opposite votes"] >= 1
    assert result.sft and all(r["messages"][-1]["role"] == "assistant" for r in result.sft)
    for row in result.dpo:
        assert set(row) == {"prompt", "chosen", "rejected"}
        assert row["prompt"][0]["role"] == "system" and row["prompt"][-1]["role"] == "user"
    # Every row tokenizes in TRL's DPOTrainer (it processes the whole dataset when built).
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    model = AutoModelForCausalLM.from_pretrained(base_model_dir)
    from peft import LoraConfig

    trainer = DPOTrainer(
        model=model,
        # TRL's defaults but for what only costs time here: bf16, which this CPU would emulate
        # (kbot's own training decides it by the hardware), activation checkpointing, batch 8.
        args=DPOConfig(
            output_dir=str(tmp_path / "t"),
            max_steps=1,
            use_cpu=True,
            report_to=[],
            max_length=512,
            bf16=False,
            gradient_checkpointing=False,
            per_device_train_batch_size=2,
        ),
        train_dataset=Dataset.from_list(result.dpo),
        processing_class=tokenizer,
        peft_config=LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM"),
    )
    assert len(trainer.train_dataset) == len(result.dpo)
    assert all(len(r["chosen_ids"]) > 0 and len(r["rejected_ids"]) > 0 for r in trainer.train_dataset)
    trainer.train()  # and one step runs on them
    assert trainer.state.global_step == 1
