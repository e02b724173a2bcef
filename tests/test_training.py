"""Training with the real bundled SmolLM2 on CPU: votes from Slack and Teams become TRL rows that
DPOTrainer loads, DPO really learns a preference (held-out accuracy, changed LoRA weights), SFT
learns the assistant's reply alone, and KTO trains on unpaired votes with balanced class weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from finetune.export import ExportOptions, export_feedback
from finetune.preference import PreferenceScore, score, score_adapter
from finetune.train import (
    TrainConfig,
    TrainingError,
    build_sft_trainer,
    kto_weights,
    train_dpo,
    train_kto,
    train_sft,
)
from kbot.db.models import AnswerMessage
from knowledge.embeddings import Embedder
from tests.fake_slack import wait_until
from tests.slack_env import mention
from tests.test_export import approve_all

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


def rag_prompt(topic: str, fact: str) -> list[dict[str, str]]:
    """A prompt as the bot builds it: instructions, retrieved passages, then the question."""
    return [
        {"role": "system", "content": "Answer from the numbered sources and cite them like [1]."},
        {
            "role": "user",
            "content": f'Sources:\n[1] Handbook: "{fact}"\n[2] Handbook: "{FACTS[-1][1]}"\n\n'
            f"Question: What is the rule for {topic}?",
        },
    ]


def test_sft_loss_covers_the_final_assistant_reply_only(base_model_dir: str, tmp_path: Path) -> None:
    (topic, fact), (topic2, fact2) = FACTS[0], FACTS[1]
    single = [*rag_prompt(topic, fact), {"role": "assistant", "content": f"{fact} [1]"}]
    # Two turns: the earlier reply is context now, so it must carry no loss either.
    multi = [*single, {"role": "user", "content": f"And {topic2}?"}, {"role": "assistant", "content": fact2}]
    trainer = build_sft_trainer(
        [{"messages": single}, {"messages": multi}],
        base_model=base_model_dir,
        out=tmp_path / "s",
        config=TrainConfig(steps=1, max_length=256),
        init_adapter=None,
    )
    tokenizer = trainer.processing_class
    for messages, row in zip((single, multi), trainer.train_dataset, strict=True):
        reply = messages[-1]["content"]
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        end_of_turn = text[text.rindex(reply) + len(reply) :]  # what the template closes a turn with
        assert end_of_turn.strip()
        expected = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in (reply, end_of_turn)]
        learned = [t for t in row["labels"] if t != -100]
        assert learned == expected[0] + expected[1]
        assert tokenizer.decode(learned) == reply + end_of_turn
        assert len(learned) * 3 < len(row["input_ids"])  # prompt, passages and question carry no loss

    last_is_user = {"messages": [{"role": "assistant", "content": "Hi."}, {"role": "user", "content": "?"}]}
    with pytest.raises(TrainingError, match="Row 1: messages must end with the assistant's reply"):
        build_sft_trainer(
            [last_is_user],
            base_model=base_model_dir,
            out=tmp_path / "x",
            config=TrainConfig(steps=1),
            init_adapter=None,
        )
    # TRL drops a row whose prompt alone fills max_length; with none left, that is said, not trained.
    too_long = {
        "messages": [{"role": "user", "content": "word " * 100}, {"role": "assistant", "content": "OK."}]
    }
    with pytest.raises(TrainingError, match="Every row's prompt is longer than max_length"):
        build_sft_trainer(
            [too_long],
            base_model=base_model_dir,
            out=tmp_path / "x",
            config=TrainConfig(steps=1, max_length=32),
            init_adapter=None,
        )


def test_kto_weights_upweight_the_rarer_vote() -> None:
    assert kto_weights(3, 3) == kto_weights(4, 3) == (1.0, 1.0)  # already in TRL's range [1, 4/3]
    for n_desirable, n_undesirable in ((30, 10), (2, 9), (1000, 7)):
        desirable_weight, undesirable_weight = kto_weights(n_desirable, n_undesirable)
        rarer_weight, common_weight = (
            (undesirable_weight, desirable_weight)
            if n_desirable > n_undesirable
            else (desirable_weight, undesirable_weight)
        )
        assert common_weight == 1.0 and rarer_weight > 1.0
        ratio = desirable_weight * n_desirable / (undesirable_weight * n_undesirable)
        assert 1 <= ratio <= 4 / 3
        # TRL's own check (kto_trainer.py), which warns otherwise: rounded bounds, 4/3 taken as 1.33.
        d, u, n_d, n_u = desirable_weight, undesirable_weight, n_desirable, n_undesirable
        assert (round(n_u * u / n_d, 2) <= d <= round(n_u * u / n_d * 1.33, 2)) or (
            round(n_d * d / n_u / 1.33, 2) <= u <= round(n_d * d / n_u, 2)
        )
    with pytest.raises(TrainingError, match="KTO needs both liked and disliked answers"):
        kto_weights(5, 0)


def kto_rows(liked: int, disliked: int) -> list[dict[str, Any]]:
    """Unpaired votes as ``kbot feedback export --format kto`` writes them: cited answers liked,
    an evasive one disliked."""
    rows = []
    for i, (topic, fact) in enumerate(FACTS[: liked + disliked]):
        answer = f"{fact} [1]" if i < liked else "I am not sure, ask HR."
        question = f'Sources:\n[1] "{fact}"\n\nQuestion: What is the rule for {topic}?'
        rows.append(
            {
                "prompt": [{"role": "user", "content": question}],
                "completion": [{"role": "assistant", "content": answer}],
                "label": i < liked,
            }
        )
    return rows


def test_kto_continues_an_adapter_on_unpaired_votes(base_model_dir: str, tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    # A starting adapter whose B matrices are not zero, as a trained one's are.
    start = tmp_path / "start"
    get_peft_model(
        AutoModelForCausalLM.from_pretrained(base_model_dir),
        LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False, task_type="CAUSAL_LM"),
    ).save_pretrained(str(start))
    rows = kto_rows(liked=6, disliked=3)
    result = train_kto(
        rows,
        base_model=base_model_dir,
        out=tmp_path / "k",
        # One step on a batch of two (KTO's least) is enough to move an adapter, and cheap on a CPU.
        config=TrainConfig(steps=1, batch_size=2, max_length=96),
        init_adapter=start,
    )
    assert result.steps == 1 and len(result.losses) == 1
    expected_weights = kto_weights(6, 3)
    assert (result.config["desirable_weight"], result.config["undesirable_weight"]) == expected_weights
    log = json.loads((tmp_path / "k" / "training_log.json").read_text())
    assert log["kind"] == "kto" and log["config"]["undesirable_weight"] == expected_weights[1] > 1
    assert (log["config"]["desirable_rows"], log["config"]["undesirable_rows"]) == (6, 3)
    before = load_file(str(start / "adapter_model.safetensors"))
    after = load_file(str(tmp_path / "k" / "adapter_model.safetensors"))
    assert set(after) == set(before)  # the same adapter continued; TRL's frozen "ref" copy is not saved
    assert any(not after[k].equal(before[k]) for k in before)
    assert json.loads((tmp_path / "k" / "adapter_config.json").read_text())["r"] == 4

    with pytest.raises(TrainingError, match="batch size of at least 2"):
        train_kto(
            rows,
            base_model=base_model_dir,
            out=tmp_path / "x",
            config=TrainConfig(batch_size=1),
            init_adapter=None,
        )
    with pytest.raises(TrainingError, match="there are 6 liked and 0 disliked rows"):
        train_kto(
            rows[:6], base_model=base_model_dir, out=tmp_path / "x", config=TrainConfig(), init_adapter=None
        )


def test_kbot_train_kto_registers_a_new_adapter(
    base_model_dir: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from bot.train_cli import train_app

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KBOT_DATA_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("KBOT_BASE_MODEL", base_model_dir)
    for name in ("KBOT_DATABASE_URL", "KBOT_QDRANT_URL"):
        monkeypatch.delenv(name, raising=False)
    rated = tmp_path / "rated.jsonl"
    rated.write_text("".join(json.dumps(r) + "\n" for r in kto_rows(liked=1, disliked=1)))
    run = CliRunner().invoke(
        train_app, ["kto", str(rated), "--steps", "1", "--from", "base", "--version", "k1"]
    )
    assert run.exit_code == 0, run.output
    assert "Trained k1 (kto, 2 rows, 1 steps" in run.output and "registered, not active" in run.output
    log = json.loads((tmp_path / "state" / "adapters" / "k1" / "training_log.json").read_text())
    assert log["kind"] == "kto" and log["config"]["desirable_weight"] == 1.0
    assert "Example:" in CliRunner().invoke(train_app, ["kto", "--help"]).output


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
        await approve_all(env.runtime.service.ledger._db)  # a reviewer approved it

        result = await export_feedback(env.runtime.service.ledger._db, ExportOptions(), embed=embedder.embed)

    assert result.made["correction"] == 1 and result.made["same question, opposite votes"] >= 1
    assert result.sft and all(r["messages"][-1]["role"] == "assistant" for r in result.sft)
    for row in result.dpo:
        assert set(row) == {"prompt", "chosen", "rejected"}
        assert row["prompt"][0]["role"] == "system" and row["prompt"][-1]["role"] == "user"
    # Every row tokenizes in TRL's DPOTrainer (it processes the whole dataset when built).
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer  # type: ignore[attr-defined]

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
    processed: Any = trainer.train_dataset
    assert len(processed) == len(result.dpo)
    assert all(len(r["chosen_ids"]) > 0 and len(r["rejected_ids"]) > 0 for r in processed)
    trainer.train()  # and one step runs on them
    assert trainer.state.global_step == 1
