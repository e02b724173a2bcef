"""LoRA training with TRL: DPO on preference pairs, SFT on chat transcripts.

Training continues from the active adapter when there is one (for DPO, TRL then uses a frozen
copy of that adapter as the reference policy), else starts a new LoRA on the base model. The
result is a new adapter directory with ``training_log.json`` (loss per logged step); registering
it (inactive) is the caller's job. Heavy imports happen inside the functions.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kbot.errors import KbotError

log = logging.getLogger(__name__)


class TrainingError(KbotError):
    """Training could not start or failed."""


@dataclass
class TrainConfig:
    """How to train. Defaults are sized for a CPU smoke run; :meth:`gpu` for real runs."""

    steps: int = field(default=30, metadata={"help": "Optimizer steps."})
    batch_size: int = field(default=4, metadata={"help": "Rows per step and device."})
    gradient_accumulation: int = field(default=1, metadata={"help": "Batches accumulated per step."})
    learning_rate: float = field(default=5e-4, metadata={"help": "Peak learning rate (linear decay)."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank (new adapters only)."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha (new adapters only)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout (new adapters only)."})
    target_modules: tuple[str, ...] = field(
        default=("q_proj", "k_proj", "v_proj", "o_proj"), metadata={"help": "Modules that get LoRA."}
    )
    max_length: int = field(
        default=512, metadata={"help": "Longest tokenized row; longer rows are truncated."}
    )
    beta: float = field(
        default=0.1, metadata={"help": "DPO: how far the policy may move from the reference."}
    )
    seed: int = field(
        default=0, metadata={"help": "Seed for data order and LoRA init: same inputs, same adapter."}
    )
    device: str | None = field(default=None, metadata={"help": "cpu or cuda; default: cuda when available."})
    bf16: bool | None = field(
        default=None,
        metadata={
            "help": "bfloat16 mixed precision; default: on with CUDA and on CPUs with native bfloat16 "
            "(AVX512-BF16 or AMX: about twice as fast as float32), off on other CPUs, which emulate it "
            "(7x slower than float32 on an AVX2-only EPYC)."
        },
    )

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "gradient_accumulation", "lora_r", "lora_alpha", "max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if not 0 < self.learning_rate < 1:
            raise ValueError("learning_rate must be between 0 and 1")
        if self.beta <= 0:
            raise ValueError("beta must be positive")
        self.target_modules = tuple(self.target_modules)

    @classmethod
    def gpu(cls, **overrides: Any) -> TrainConfig:
        """Defaults for a GPU: bigger batches, more steps, bf16, lower learning rate."""
        return cls(
            **{
                "steps": 300,
                "batch_size": 16,
                "learning_rate": 1e-4,
                "lora_r": 16,
                "lora_alpha": 32,
                "bf16": True,
                **overrides,
            }
        )


@dataclass
class TrainResult:
    path: Path
    steps: int
    seconds: float
    losses: list[float]
    config: dict[str, Any]


def _device(config: TrainConfig) -> str:
    import torch

    return config.device or ("cuda" if torch.cuda.is_available() else "cpu")


def _mixed_precision(config: TrainConfig) -> bool:
    """bf16 autocast as asked; by default on CUDA and on CPUs that compute bfloat16 natively.
    (TRL turns it on everywhere, and a CPU without it emulates bfloat16 many times slower.)"""
    if config.bf16 is not None:
        return config.bf16
    if _device(config).startswith("cuda"):
        return True
    import torch

    native = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private: absent is False
    return any(getattr(torch.cpu, name, lambda: False)() for name in native)


def load_policy(base_model: str, init_adapter: Path | None, config: TrainConfig) -> tuple[Any, Any]:
    """The base model (float32 on CPU, bf16 on CUDA) with the adapter to continue from, trainable."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = _device(config)
    bf16 = config.bf16 if config.bf16 is not None else device.startswith("cuda")
    try:
        tokenizer = AutoTokenizer.from_pretrained(base_model)
        model: Any = AutoModelForCausalLM.from_pretrained(
            base_model, dtype=torch.bfloat16 if bf16 else torch.float32
        )
    except (OSError, ValueError) as exc:
        raise TrainingError(f"Cannot load the base model {base_model}: {exc}") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if init_adapter is not None:
        model = PeftModel.from_pretrained(model, str(init_adapter), is_trainable=True)
    return model, tokenizer


def _lora(config: TrainConfig) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.target_modules),
        task_type="CAUSAL_LM",
    )


def _common_args(config: TrainConfig, out: Path) -> dict[str, Any]:
    return {
        "bf16": _mixed_precision(config),
        # TRL recomputes activations to save GPU memory; on a CPU that only costs time (~10 %).
        "gradient_checkpointing": _device(config).startswith("cuda"),
        "output_dir": str(out / "trainer"),
        "max_steps": config.steps,
        "per_device_train_batch_size": config.batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation,
        "learning_rate": config.learning_rate,
        "lr_scheduler_type": "linear",
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": [],
        "seed": config.seed,
        "data_seed": config.seed,
        "use_cpu": _device(config) == "cpu",
        "max_length": config.max_length,
        "remove_unused_columns": False,
    }


def train_dpo(
    rows: Sequence[dict[str, Any]],
    *,
    base_model: str,
    out: Path,
    config: TrainConfig,
    init_adapter: Path | None,
) -> TrainResult:
    """DPO on conversational ``{"prompt", "chosen", "rejected"}`` rows (TRL's format)."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer  # type: ignore[attr-defined]

    _check_rows(rows, ("prompt", "chosen", "rejected"))
    _seed(config.seed)
    model, tokenizer = load_policy(base_model, init_adapter, config)
    args = DPOConfig(**_common_args(config, out), beta=config.beta)
    trainer = DPOTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(list(rows)),
        processing_class=tokenizer,
        peft_config=None if init_adapter else _lora(config),
    )
    return _run(trainer, out, config, "dpo")


def train_sft(
    rows: Sequence[dict[str, Any]],
    *,
    base_model: str,
    out: Path,
    config: TrainConfig,
    init_adapter: Path | None,
) -> TrainResult:
    """SFT on OpenAI-style chat rows ``{"messages": [...]}`` (loss on the assistant turns only)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer  # type: ignore[attr-defined]

    _check_rows(rows, ("messages",))
    _seed(config.seed)
    model, tokenizer = load_policy(base_model, init_adapter, config)
    args = SFTConfig(**_common_args(config, out), assistant_only_loss=False, completion_only_loss=None)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list([{"messages": r["messages"]} for r in rows]),
        processing_class=tokenizer,
        peft_config=None if init_adapter else _lora(config),
    )
    return _run(trainer, out, config, "sft")


def _step_logger(kind: str) -> Any:
    """A callback that logs each logged step: operators (and tests) see that training is under way."""
    from transformers import TrainerCallback

    class StepLogger(TrainerCallback):  # type: ignore[misc]
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            if logs and "loss" in logs:
                log.info("%s step %d/%d: loss %.4f", kind, state.global_step, state.max_steps, logs["loss"])

    return StepLogger()


def _run(trainer: Any, out: Path, config: TrainConfig, kind: str) -> TrainResult:
    started = time.perf_counter()
    trainer.add_callback(_step_logger(kind))
    trainer.train()
    seconds = time.perf_counter() - started
    model = trainer.model
    if "ref" in getattr(model, "peft_config", {}):
        model.delete_adapter("ref")  # TRL's frozen copy of the starting adapter; not part of the result
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    history = [h for h in trainer.state.log_history if "loss" in h]
    (out / "training_log.json").write_text(
        json.dumps(
            {"kind": kind, "config": asdict(config), "seconds": seconds, "log": trainer.state.log_history},
            indent=2,
            default=str,
        )
    )
    return TrainResult(
        out, int(trainer.state.global_step), seconds, [float(h["loss"]) for h in history], asdict(config)
    )


def _seed(seed: int) -> None:
    from transformers import set_seed

    set_seed(seed)


def _check_rows(rows: Sequence[dict[str, Any]], keys: tuple[str, ...]) -> None:
    if not rows:
        raise TrainingError("There is nothing to train on: the file has no rows.")
    for i, row in enumerate(rows, 1):
        missing = [k for k in keys if k not in row]
        if missing:
            raise TrainingError(f"Row {i} lacks {', '.join(missing)}; expected the keys {', '.join(keys)}.")
        for k in keys:
            value = row[k]
            if not isinstance(value, list) or not all(
                isinstance(m, dict) and "role" in m and "content" in m for m in value
            ):
                raise TrainingError(f"Row {i}: {k} must be a list of {{role, content}} messages.")
