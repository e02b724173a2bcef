"""DPO training throughput: ``kbot train dpo``'s training function vs a bare TRL ``DPOTrainer`` script,
same model (bundled SmolLM2), same rows, same LoRA and trainer settings, interleaved runs in one
process; only ``trainer.train()`` is timed. Goal: kbot ≥ 0.9× the bare script's steps per second.

    python bench/dpo.py [--steps N] [--rounds R]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.base_model import BUNDLED, resolve_base_model
from finetune.train import TrainConfig, train_dpo
from tests.test_training import FACTS, cite_pairs


def bare_trl(rows: list[dict[str, Any]], base: str, config: TrainConfig, out: Path) -> float:
    """The script a TRL user would write, with the same settings; seconds spent in train()."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from trl import DPOConfig, DPOTrainer

    set_seed(config.seed)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    args = DPOConfig(
        output_dir=str(out),
        max_steps=config.steps,
        per_device_train_batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        lr_scheduler_type="linear",
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=config.seed,
        use_cpu=True,
        max_length=config.max_length,
        beta=config.beta,
    )
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.target_modules),
        task_type="CAUSAL_LM",
    )
    trainer = DPOTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=lora,
    )
    started = time.perf_counter()
    trainer.train()
    return time.perf_counter() - started


def main(args: argparse.Namespace) -> None:
    base = resolve_base_model(BUNDLED, ROOT / ".kbot" / "models")
    rows = cite_pairs(FACTS)
    config = TrainConfig(steps=args.steps, max_length=192, device="cpu")
    kbot_s: list[float] = []
    bare_s: list[float] = []
    for r in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            bare_s.append(bare_trl(rows, base, config, Path(tmp) / "bare"))
            kbot_s.append(
                train_dpo(
                    rows, base_model=base, out=Path(tmp) / "kbot", config=config, init_adapter=None
                ).seconds
            )
        print(
            f"  round {r + 1}: bare TRL {bare_s[-1]:.1f} s, kbot {kbot_s[-1]:.1f} s for {args.steps} steps",
            flush=True,
        )
    kbot_rate, bare_rate = args.steps / statistics.median(kbot_s), args.steps / statistics.median(bare_s)
    ratio = kbot_rate / bare_rate
    print(
        f"DPO, {len(rows)} pairs, batch {config.batch_size}, max_length {config.max_length}, "
        f"LoRA r={config.lora_r}, CPU"
    )
    print(
        f"  kbot {kbot_rate:.3f} steps/s vs bare TRL {bare_rate:.3f} steps/s = {ratio:.2f}x "
        f"(goal ≥ 0.9x -> {'met' if ratio >= 0.9 else 'NOT met'})"
    )
    print(
        f"RESULT dpo_vs_trl={ratio:.3f} kbot_steps_per_s={kbot_rate:.3f} trl_steps_per_s={bare_rate:.3f} "
        f"steps={args.steps} rounds={args.rounds} goal=0.9"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    main(parser.parse_args())
