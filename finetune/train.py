"""LoRA training with TRL: DPO on preference pairs, KTO on single rated answers, SFT on chat transcripts.

Training continues from the active adapter when there is one (for DPO and KTO, TRL then uses a
frozen copy of that adapter as the reference policy), else starts a new LoRA on the base model.
SFT learns the final assistant turn only: system prompt, passages and question carry no loss.
The result is a new adapter directory with ``training_log.json`` (loss per logged step); registering
it (inactive) is the caller's job. Heavy imports happen inside the functions.
"""

from __future__ import annotations

import json
import logging
import random
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
    batch_size: int = field(default=4, metadata={"help": "Rows per step and device (KTO: 2 or more)."})
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
        default=0.1, metadata={"help": "DPO, KTO: how far the policy may move from the reference."}
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
    """SFT on OpenAI-style chat rows ``{"messages": [..., {"role": "assistant", ...}]}``; the loss
    covers the final assistant turn only (see :func:`build_sft_trainer`)."""
    trainer = build_sft_trainer(
        rows, base_model=base_model, out=out, config=config, init_adapter=init_adapter
    )
    return _run(trainer, out, config, "sft")


def build_sft_trainer(
    rows: Sequence[dict[str, Any]],
    *,
    base_model: str,
    out: Path,
    config: TrainConfig,
    init_adapter: Path | None,
) -> Any:
    """The SFTTrainer :func:`train_sft` runs, its dataset tokenized (``labels`` is -100 off the loss).

    Each row becomes TRL's conversational prompt/completion row, ``{"prompt": messages[:-1],
    "completion": [messages[-1]]}``, and TRL's completion-only loss masks the prompt. (Its
    ``assistant_only_loss`` needs ``{% generation %}`` markers, which the bundled template lacks.)
    """
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer  # type: ignore[attr-defined]

    _check_rows(rows, ("messages",))
    for i, row in enumerate(rows, 1):
        messages = row["messages"]
        if len(messages) < 2 or messages[-1]["role"] != "assistant":
            raise TrainingError(
                f"Row {i}: messages must end with the assistant's reply, after the messages it answers."
            )
    _seed(config.seed)
    model, tokenizer = load_policy(base_model, init_adapter, config)
    args = SFTConfig(**_common_args(config, out), assistant_only_loss=False, completion_only_loss=True)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(
            [{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows]
        ),
        processing_class=tokenizer,
        peft_config=None if init_adapter else _lora(config),
    )
    return _check_kept(trainer, len(rows), config)


def kto_weights(n_desirable: int, n_undesirable: int) -> tuple[float, float]:
    """``(desirable_weight, undesirable_weight)`` for KTO on this many 👍 and 👎 rows.

    TRL's KTO guide: upweight the less common kind until (desirable_weight × n_desirable) /
    (undesirable_weight × n_undesirable) lies in [1, 4/3]. Already there, both stay 1; else the
    minority lands mid-range (7/6), so TRL's own check, which rounds its bounds to two places and
    takes 4/3 as 1.33, agrees too.
    """
    if n_desirable < 1 or n_undesirable < 1:
        raise TrainingError(
            f"KTO needs both liked and disliked answers, but there are {n_desirable} liked and "
            f"{n_undesirable} disliked rows. Collect more votes, or train on the liked answers with SFT."
        )
    ratio = n_desirable / n_undesirable
    if 1 <= ratio <= 4 / 3:
        return 1.0, 1.0
    if ratio < 1:
        return 7 / 6 / ratio, 1.0
    return 1.0, ratio / (7 / 6)


def train_kto(
    rows: Sequence[dict[str, Any]],
    *,
    base_model: str,
    out: Path,
    config: TrainConfig,
    init_adapter: Path | None,
) -> TrainResult:
    """KTO on unpaired conversational ``{"prompt", "completion", "label"}`` rows (TRL's format;
    ``label`` is true for a liked answer), with class weights from :func:`kto_weights`."""
    from datasets import Dataset
    from trl import KTOConfig, KTOTrainer  # type: ignore[attr-defined]

    _check_rows(rows, ("prompt", "completion"))
    for i, row in enumerate(rows, 1):
        if not isinstance(row.get("label"), bool):
            raise TrainingError(f"Row {i}: label must be true (a liked answer) or false (a disliked one).")
        if not row["completion"] or any(m["role"] != "assistant" for m in row["completion"]):
            raise TrainingError(f"Row {i}: completion must be the assistant's reply.")
    if config.batch_size < 2:
        raise TrainingError(
            "KTO estimates its reference point from the other answers in a batch, so it needs a batch "
            f"size of at least 2 (4 or more is better), not {config.batch_size}."
        )
    liked = sum(r["label"] for r in rows)
    desirable_weight, undesirable_weight = kto_weights(liked, len(rows) - liked)
    weights: dict[str, Any] = {"desirable_weight": desirable_weight, "undesirable_weight": undesirable_weight}
    # TRL reads KTO rows in order (each row's KL term pairs it with its batch neighbours), so the
    # seeded shuffle here is the data order: without it, export order would decide the batches.
    shuffled = [{k: r[k] for k in ("prompt", "completion", "label")} for r in rows]
    random.Random(config.seed).shuffle(shuffled)
    _seed(config.seed)
    model, tokenizer = load_policy(base_model, init_adapter, config)
    args = KTOConfig(**_common_args(config, out), beta=config.beta, **weights)
    trainer = KTOTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(shuffled),
        processing_class=tokenizer,
        peft_config=None if init_adapter else _lora(config),
    )
    _check_kept(trainer, len(rows), config)
    counts = {"desirable_rows": liked, "undesirable_rows": len(rows) - liked}
    return _run(trainer, out, config, "kto", {**counts, **weights})


def _check_kept(trainer: Any, n_rows: int, config: TrainConfig) -> Any:
    """TRL silently drops the rows whose prompt alone fills max_length: no reply is left to learn."""
    kept = len(trainer.train_dataset)
    if kept == 0:
        raise TrainingError(
            f"Every row's prompt is longer than max_length ({config.max_length} tokens), so no reply "
            "is left to learn from. Raise max_length or shorten the prompts."
        )
    if kept < n_rows:
        log.warning("%d of %d rows left out: their prompt alone fills max_length", n_rows - kept, n_rows)
    return trainer


def _watch(trainer: Any, kind: str) -> None:
    """Log each step (operators and tests see training under way); keep the progress bar (stderr)
    but not the dict it writes to stdout at each step: stdout is the command's (`kbot nightly`)."""
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    class StepLogger(TrainerCallback):  # type: ignore[misc]
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            if logs and "loss" in logs:
                log.info("%s step %d/%d: loss %.4f", kind, state.global_step, state.max_steps, logs["loss"])

    class Bar(ProgressCallback):  # type: ignore[misc]
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            pass

    trainer.add_callback(StepLogger())
    trainer.pop_callback(PrinterCallback)  # without a bar (tqdm off), the same dict, printed
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(Bar())


def _run(
    trainer: Any, out: Path, config: TrainConfig, kind: str, extra: dict[str, Any] | None = None
) -> TrainResult:
    """Train, save the adapter and its log; ``extra`` joins the recorded config (e.g. KTO's weights)."""
    started = time.perf_counter()
    _watch(trainer, kind)
    trainer.train()
    seconds = time.perf_counter() - started
    model = trainer.model
    if "ref" in getattr(model, "peft_config", {}):
        model.delete_adapter("ref")  # TRL's frozen copy of the starting adapter; not part of the result
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    history = [h for h in trainer.state.log_history if "loss" in h]
    recorded = {**asdict(config), **(extra or {})}
    (out / "training_log.json").write_text(
        json.dumps(
            {"kind": kind, "config": recorded, "seconds": seconds, "log": trainer.state.log_history},
            indent=2,
            default=str,
        )
    )
    return TrainResult(
        out, int(trainer.state.global_step), seconds, [float(h["loss"]) for h in history], recorded
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
