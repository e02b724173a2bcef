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

    Feedback from anonymous web visitors is left out unless KBOT_TRAIN_ON_ANONYMOUS=true.

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
        train_on_anonymous=settings.train_on_anonymous,
    )

    async def go() -> Any:
        db = Database(settings.sql_url)
        try:
            await db.migrate()
            embedder = SentenceTransformerEmbedder(settings.embedding_model, device=settings.embedding_device)
            return await export_feedback(db, options, embed=embedder.embed, embed_model=embedder.name)
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


def _open_answerer(settings: Settings) -> Any:
    from agent.answering import Answerer

    return Answerer.open(settings)


def eval_command(
    adapter: Annotated[str, typer.Argument(help="The candidate adapter version.")],
    against: Annotated[str, typer.Option(help="active, base, or a version to compare with.")] = "active",
    golden: Annotated[
        Path | None, typer.Option(help="Golden JSONL: {question, collections, facts} rows and/or DPO pairs.")
    ] = None,
    report: Annotated[Path | None, typer.Option(help="Write the report here (.md, .html or .json).")] = None,
) -> None:
    """Compare an adapter with the active one (or another) on a golden set; exit 1 if it would be refused.

    Example:  kbot eval dpo-20261122-020000 --golden golden.jsonl --report eval.md
    """
    from agent.adapters import AdapterRegistry
    from agent.base_model import resolve_base_model
    from finetune.evaluate import evaluate, read_golden

    settings = _settings()
    if golden is None:
        raise ConfigError(
            "Give a golden set with --golden FILE (questions with facts, and/or preference pairs)."
        )
    questions, pairs = read_golden(golden)

    async def go() -> Any:
        answerer = await _open_answerer(settings)
        try:
            registry = AdapterRegistry(answerer.kb.db)
            known = {a.version: a for a in await registry.list()}
            if adapter not in known:
                raise ConfigError(f"No adapter {adapter!r}. Known: {', '.join(known) or 'none'}.")
            other = (
                await registry.active()
                if against == "active"
                else None
                if against == "base"
                else known.get(against)
            )
            if against not in ("active", "base") and other is None:
                raise ConfigError(f"No adapter {against!r} to compare with.")
            base = resolve_base_model(settings.base_model, settings.model_cache_dir)
            name = other.version if other else "base"
            return await evaluate(
                answerer,
                (adapter, known[adapter].ref),
                (name, other.ref if other else None),
                questions,
                pairs,
                base_model=base,
            )
        finally:
            await answerer.close()

    result = asyncio.run(go())
    markdown = result.to_markdown()
    if report is not None:
        if report.suffix == ".json":
            report.write_text(result.to_json(), encoding="utf-8")
        elif report.suffix == ".html":
            import html

            report.write_text(
                f"<!doctype html><meta charset=utf-8><pre>{html.escape(markdown)}</pre>", encoding="utf-8"
            )
        else:
            report.write_text(markdown, encoding="utf-8")
    typer.echo(markdown)
    raise typer.Exit(0 if result.passed else 1)


def nightly_command(
    golden: Annotated[
        Path | None, typer.Option(help="Golden JSONL the candidate must not regress on.")
    ] = None,
    min_pairs: Annotated[
        int, typer.Option(help="Skip the run with fewer new preference pairs than this.")
    ] = 20,
    since_days: Annotated[
        int | None, typer.Option(help="Only feedback of the last N days (default: all).")
    ] = None,
    steps: Annotated[
        int | None, typer.Option(help="Training steps (default: 30 on CPU, 300 with --gpu).")
    ] = None,
    gpu: Annotated[bool, typer.Option(help="GPU training defaults.")] = False,
) -> None:
    """Export → train (SFT on corrections, then DPO) → evaluate → promote or keep; recorded in the SQL store.

    Run it from cron (`0 2 * * * cd /srv/kbot && kbot nightly --golden golden.jsonl`), a Kubernetes
    CronJob, or inside the server with `kbot serve --nightly 02:00`. Two runs never overlap.
    """
    from datetime import timedelta

    from finetune.nightly import NightlyConfig, run_nightly
    from finetune.train import TrainConfig
    from knowledge.embeddings import SentenceTransformerEmbedder

    settings = _settings()
    overrides: dict[str, Any] = {"steps": steps} if steps else {}
    config = NightlyConfig(
        min_pairs=min_pairs,
        golden=golden,
        since=datetime.now(UTC) - timedelta(days=since_days) if since_days else None,
        train=TrainConfig.gpu(**overrides) if gpu else TrainConfig(**overrides),
    )

    async def go() -> Any:
        answerer = await _open_answerer(settings)
        try:
            embedder = SentenceTransformerEmbedder(settings.embedding_model, device=settings.embedding_device)
            return await run_nightly(
                settings, answerer, config, embed=embedder.embed, embed_model=embedder.name
            )
        finally:
            await answerer.close()

    run = asyncio.run(go())
    typer.echo(f"Run {run.id}: {run.status} — {run.decision} ({run.seconds:.0f} s)")
    raise typer.Exit(0 if run.status in ("promoted", "kept", "skipped") else 1)
