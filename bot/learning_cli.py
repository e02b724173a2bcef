"""The learning loop's commands: ``kbot feedback export``, ``kbot train``, ``kbot adapters``.

Kept apart from ``cli.py`` so that module stays small; ``cli.py`` mounts these sub-apps.
"""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from kbot.errors import ConfigError
from kbot.settings import Settings

feedback_app = typer.Typer(help="Votes and corrections people gave kbot's answers.", no_args_is_help=True)
train_app = typer.Typer(help="Train a new LoRA adapter (registered, not active).", no_args_is_help=True)
adapters_app = typer.Typer(help="LoRA adapter versions: list, promote, roll back.", no_args_is_help=True)


def _settings() -> Settings:
    from bot.cli import _settings as settings

    return settings()


@feedback_app.command("export")
def export(
    fmt: Annotated[
        str, typer.Option("--format", help="dpo (preference pairs), kto (single rated answers) or sft.")
    ],
    out: Annotated[Path | None, typer.Option(help="JSONL file to write (default: standard output).")] = None,
    since: Annotated[
        datetime | None, typer.Option(help="Only feedback given since this date (e.g. 2026-11-01).")
    ] = None,
    min_votes: Annotated[int, typer.Option(help="Net votes that make an answer good (+N) or bad (-N).")] = 1,
    max_votes_per_user: Annotated[
        int,
        typer.Option(help="Votes counted per person (their oldest first), so no one steers the model alone."),
    ] = 200,
    similarity: Annotated[
        float, typer.Option(help="Cosine similarity at which two questions count as the same question.")
    ] = 0.9,
) -> None:
    """Export feedback as training rows in TRL's formats, and say what was dropped and why.

    Example:  kbot feedback export --format dpo --since 2026-11-01 --out pairs.jsonl
    """
    from finetune.export import FORMATS, ExportOptions, export_feedback
    from kbot.db import Database
    from knowledge.embeddings import SentenceTransformerEmbedder

    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}.")
    settings = _settings()
    options = ExportOptions(
        since=since.replace(tzinfo=since.tzinfo or UTC) if since else None,
        min_votes=min_votes,
        max_votes_per_user=max_votes_per_user,
        similarity=similarity,
    )

    async def go() -> Any:
        db = Database(settings.sql_url)
        try:
            await db.migrate()
            embedder = SentenceTransformerEmbedder(settings.embedding_model, device=settings.embedding_device)
            return await export_feedback(db, options, embed=embedder.embed)
        finally:
            await db.close()

    result = asyncio.run(go())
    rows = result.rows(fmt)
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if out is None:
        sys.stdout.write(lines)
    else:
        out.write_text(lines, encoding="utf-8")
    typer.echo(result.summary(), err=True)


def _train(kind: str, file: Path, steps: int | None, start: str, version: str | None, gpu: bool) -> None:
    from agent.adapters import AdapterRegistry
    from agent.base_model import resolve_base_model
    from finetune.train import TrainConfig, train_dpo, train_sft
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

    async def go() -> None:
        db = Database(settings.sql_url)
        try:
            await db.migrate()
            registry = AdapterRegistry(db)
            active = await registry.active() if start == "active" else None
            base = resolve_base_model(settings.base_model, settings.model_cache_dir)
            out = settings.data_dir / "adapters" / version
            train = train_dpo if kind == "dpo" else train_sft
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

    Example:  kbot train sft curated-qa.jsonl --from base
    """
    _train("sft", file, steps, start, version, gpu)


def _registry_call(action: str, version: str | None = None) -> Any:
    from agent.adapters import AdapterRegistry
    from kbot.db import Database

    settings = _settings()

    async def go() -> Any:
        db = Database(settings.sql_url)
        try:
            await db.migrate()
            registry = AdapterRegistry(db)
            if action == "list":
                return await registry.list()
            if action == "promote":
                await registry.activate(version)
                return version
            previous = await registry.previous()
            await registry.activate(previous.version if previous else None)
            return previous.version if previous else None
        finally:
            await db.close()

    return asyncio.run(go())


@adapters_app.command("list")
def adapters_list() -> None:
    """Adapter versions, oldest first; * marks the active one."""
    rows = _registry_call("list")
    if not rows:
        typer.echo("No adapters yet: the base model answers. Train one with: kbot train dpo FILE")
        return
    for a in rows:
        loss = a.training.get("final_loss")
        scores = ", ".join(f"{k}={v}" for k, v in sorted(a.scores.items()) if isinstance(v, int | float))
        typer.echo(
            f"{'*' if a.active else ' '} {a.version}  {a.training.get('kind', '?')}  "
            f"loss={loss if loss is not None else '-'}  {scores}"
        )


@adapters_app.command("promote")
def adapters_promote(version: Annotated[str, typer.Argument(help="The version to make active.")]) -> None:
    """Make VERSION the active adapter. Running servers answer with it from their next answer on."""
    _registry_call("promote", version)
    typer.echo(f"{version} is now active.")


@adapters_app.command("rollback")
def adapters_rollback() -> None:
    """Reactivate the adapter that was active before the current one (or the base model)."""
    version = _registry_call("rollback")
    typer.echo(
        f"{version} is active again." if version else "No earlier adapter: the base model answers now."
    )
