"""``kbot train dpo|kto|sft FILE``: train a new LoRA adapter and register it, inactive.

Kept apart from ``learning_cli.py`` (which re-exports :data:`train_app`) so both stay small.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from kbot.errors import ConfigError
from kbot.settings import Settings

train_app = typer.Typer(help="Train a new LoRA adapter (registered, not active).", no_args_is_help=True)


def _settings() -> Settings:
    from bot.cli import _settings as settings

    return settings()


def _train(kind: str, file: Path, steps: int | None, start: str, version: str | None, gpu: bool) -> None:
    from agent.adapters import AdapterRegistry
    from agent.base_model import resolve_base_model
    from finetune.train import TrainConfig, train_dpo, train_kto, train_sft
    from kbot.db import Database

    if start not in ("active", "base"):
        raise ConfigError("--from must be active or base.")
    try:
        rows = [json.loads(line) for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, ValueError) as exc:
        raise ConfigError(f"Cannot read {file} as JSON lines: {exc}") from exc
    settings = _settings()
    overrides: dict[str, Any] = {"steps": steps} if steps else {}
    config = TrainConfig.gpu(**overrides) if gpu else TrainConfig(**overrides)
    version = version or f"{kind}-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    train = {"dpo": train_dpo, "kto": train_kto, "sft": train_sft}[kind]

    async def go() -> None:
        db = Database(settings.sql_url)
        try:
            await db.migrate()
            registry = AdapterRegistry(db)
            active = await registry.active() if start == "active" else None
            base = resolve_base_model(settings.base_model, settings.model_cache_dir)
            out = settings.data_dir / "adapters" / version
            result = await asyncio.to_thread(
                train,
                rows,
                base_model=base,
                out=out,
                config=config,
                init_adapter=active.path if active else None,
            )
            await registry.register(
                version,
                base_model=settings.base_model,
                path=result.path,
                training={
                    "kind": kind,
                    "rows": len(rows),
                    "file": str(file),
                    "from": active.version if active else None,
                    "steps": result.steps,
                    "seconds": round(result.seconds, 1),
                    "final_loss": result.losses[-1] if result.losses else None,
                    "losses": result.losses,  # the dashboard's loss curve
                    "config": result.config,
                },
            )
            typer.echo(
                f"Trained {version} ({kind}, {len(rows)} rows, {result.steps} steps, {result.seconds:.0f} s, "
                f"loss {result.losses[0]:.3f} → {result.losses[-1]:.3f}); registered, not active. "
                f"Promote with: kbot adapters promote {version}"
            )
        finally:
            await db.close()

    asyncio.run(go())


_STEPS = typer.Option(help="Optimizer steps (default: 30 on CPU, 300 with --gpu).")
_FROM = typer.Option("--from", help="active: continue from the active adapter; base: a new LoRA.")
_VERSION = typer.Option(help="Version name (default: KIND-TIMESTAMP).")
_GPU = typer.Option(help="GPU defaults: bf16, bigger batches, more steps.")


@train_app.command("dpo")
def train_dpo_command(
    file: Annotated[Path, typer.Argument(help="JSONL of {prompt, chosen, rejected} (kbot feedback export).")],
    steps: Annotated[int | None, _STEPS] = None,
    start: Annotated[str, _FROM] = "active",
    version: Annotated[str | None, _VERSION] = None,
    gpu: Annotated[bool, _GPU] = False,
) -> None:
    """DPO-train a LoRA adapter on preference pairs.

    Example:  kbot feedback export --format dpo --out pairs.jsonl && kbot train dpo pairs.jsonl
    """
    _train("dpo", file, steps, start, version, gpu)


@train_app.command("kto")
def train_kto_command(
    file: Annotated[
        Path, typer.Argument(help="JSONL of {prompt, completion, label} (kbot feedback export --format kto).")
    ],
    steps: Annotated[int | None, _STEPS] = None,
    start: Annotated[str, _FROM] = "active",
    version: Annotated[str | None, _VERSION] = None,
    gpu: Annotated[bool, _GPU] = False,
) -> None:
    """KTO-train a LoRA adapter on single 👍/👎-rated answers that have no pair.

    It needs both liked and disliked answers; the rarer kind weighs more, so the two balance.

    Example:  kbot feedback export --format kto --out rated.jsonl && kbot train kto rated.jsonl
    """
    _train("kto", file, steps, start, version, gpu)


@train_app.command("sft")
def train_sft_command(
    file: Annotated[
        Path,
        typer.Argument(help='JSONL of {"messages": [...]} (OpenAI chat format), hand-written or exported.'),
    ],
    steps: Annotated[int | None, _STEPS] = None,
    start: Annotated[str, _FROM] = "active",
    version: Annotated[str | None, _VERSION] = None,
    gpu: Annotated[bool, _GPU] = False,
) -> None:
    """Fine-tune a LoRA adapter on chat transcripts (curated Q&A, corrections).

    It learns each row's last message, the assistant's reply; the messages before it are context.

    Example:  kbot train sft curated-qa.jsonl --from base
    """
    _train("sft", file, steps, start, version, gpu)
