"""The learning loop's commands: ``kbot feedback export``, ``kbot train``, ``kbot adapters``.

Kept apart from ``cli.py`` so that module stays small; ``cli.py`` mounts these sub-apps.
``kbot adapters`` lives in ``adapters_cli.py``; :data:`adapters_app` is re-exported here.
``kbot train`` lives in ``train_cli.py``; :data:`train_app` is re-exported here.
"""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from bot import adapters_cli, train_cli
from kbot.errors import ConfigError
from kbot.settings import Settings

feedback_app = typer.Typer(help="Votes and corrections people gave kbot's answers.", no_args_is_help=True)
train_app = train_cli.train_app  # cli.py mounts it from here
adapters_app = adapters_cli.adapters_app  # cli.py mounts it from here


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
        system_prompt=settings.system_prompt,
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

    The verdict is recorded with the adapter: `kbot adapters promote` accepts it while the version
    it was compared with is still the active one.

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
            result = await evaluate(
                answerer,
                (adapter, known[adapter].ref),
                (name, other.ref if other else None),
                questions,
                pairs,
                base_model=base,
            )
            # The promotion gate reads this verdict (agent/adapters.py documents its shape).
            await registry.record_evaluation(
                adapter,
                against=name,
                passed=result.passed,
                reasons=result.reasons,
                by=adapters_cli.operator("kbot eval"),
            )
            return result
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
        Path | None,
        typer.Option(
            help="Golden JSONL the candidate must beat the active adapter on (default: "
            "KBOT_DATA_DIR/golden.jsonl; without one nothing is promoted)."
        ),
    ] = None,
    min_pairs: Annotated[
        int, typer.Option(help="New pairs needed for DPO, or unpaired votes for KTO; fewer of both: skip.")
    ] = 20,
    since_days: Annotated[
        int | None,
        typer.Option(help="Only feedback of the last N days (default: all since the last promoted run)."),
    ] = None,
    steps: Annotated[
        int | None, typer.Option(help="Training steps (default: 30 on CPU, 300 with --gpu).")
    ] = None,
    gpu: Annotated[bool, typer.Option(help="GPU training defaults.")] = False,
    start: Annotated[
        str,
        typer.Option(
            "--from", help="active: continue the active adapter; base: a new LoRA on the base model."
        ),
    ] = "active",
) -> None:
    """Export → plan (SFT on approved corrections, then DPO or KTO) → train → gate → promote or keep.

    Trains on feedback new since the last promoted run plus a replay sample of older rows, and
    promotes the candidate only if it beats the active adapter on the golden facts and regresses
    nowhere. Every run is recorded in the SQL store, with its plan and why (kbot adapters history).
    Make a golden set with `kbot golden add` or `kbot golden from-corrections`.

    Run it from cron (`0 2 * * * cd /srv/kbot && kbot nightly`), a Kubernetes CronJob, or inside
    the server with `kbot serve --nightly 02:00`. Two runs never overlap.
    """
    from datetime import timedelta

    from finetune.nightly import NightlyConfig, run_nightly
    from finetune.train import TrainConfig
    from knowledge.embeddings import SentenceTransformerEmbedder

    if start not in ("active", "base"):
        raise ConfigError("--from must be active or base.")
    settings = _settings()
    overrides: dict[str, Any] = {"steps": steps} if steps else {}
    config = NightlyConfig(
        min_pairs=min_pairs,
        golden=golden,
        since=datetime.now(UTC) - timedelta(days=since_days) if since_days else None,
        train=TrainConfig.gpu(**overrides) if gpu else TrainConfig(**overrides),
        from_active=start == "active",
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
