"""``kbot sources``: the folders kbot serve keeps in sync (``[sources]``), their last sync, a sync now."""

from __future__ import annotations

import json
from typing import Annotated

import typer

sources_app = typer.Typer(
    help="Sources kbot serve keeps in sync ([sources] in kbot.toml): their status, or sync them now.",
    invoke_without_command=True,
    no_args_is_help=False,
)


@sources_app.callback()
def sources(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List the configured sources with their last sync (status, when, what changed or failed)."""
    if ctx.invoked_subcommand is not None:
        return
    from bot.cli import _run, _settings
    from kbot.db import Database
    from kbot.db.models import SourceSync

    settings = _settings()

    async def go() -> None:
        from sqlalchemy import select

        db = Database(settings.sql_url)
        try:
            await db.migrate()
            async with db.session() as s:
                synced = {r.name: r for r in await s.scalars(select(SourceSync))}
        finally:
            await db.close()
        names = sorted(set(settings.sources) | set(synced))
        rows = []
        for name in names:
            config, row = settings.sources.get(name), synced.get(name)
            rows.append(
                {
                    "name": name,
                    "path": str(config.path) if config else row.path if row else "",
                    "collection": config.collection if config else row.collection if row else "",
                    "schedule": (config.cron or f"every {config.every or '1h'}") if config else "removed",
                    "status": row.status if row else "never synced",
                    "finished_at": row.finished_at.isoformat(timespec="seconds")
                    if row and row.finished_at
                    else None,
                    "detail": row.detail if row else "",
                }
            )
        if as_json:
            typer.echo(json.dumps(rows, indent=2))
            return
        if not rows:
            typer.echo(
                'No sources. Add one to kbot.toml: [sources.handbook] path = "docs/", collection = "hr"'
            )
            return
        for r in rows:
            typer.echo(f"{r['name']}: {r['path']} → {r['collection']} ({r['schedule']}): {r['status']}")
            if r["finished_at"] or r["detail"]:
                typer.echo(f"    {r['finished_at'] or ''}  {r['detail']}")

    _run(go)


@sources_app.command("sync")
def sync(
    names: Annotated[list[str] | None, typer.Argument(help="Sources to sync (default: all).")] = None,
    prune: Annotated[
        bool,
        typer.Option("--prune", help="Also purge sources whose folder is gone or that left the settings."),
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Purge without asking.")] = False,
) -> None:
    """Sync sources now, as kbot serve does on their schedule. Exit status 1: a sync failed.

    Example:  kbot sources sync handbook --prune
    """
    from bot.cli import _confirm, _run, _settings
    from bot.sources import SourceSyncer
    from kbot.errors import ConfigError
    from knowledge.base import KnowledgeBase

    settings = _settings()
    unknown = [n for n in names or [] if n not in settings.sources]
    if unknown:
        known = ", ".join(settings.sources) or "none"
        raise ConfigError(f"No source named {', '.join(unknown)} in the settings (configured: {known}).")

    async def go() -> int:
        kb = await KnowledgeBase.open(settings)
        failed = 0
        try:
            syncer = SourceSyncer(kb, settings.sources)
            if prune:
                stale = await syncer.stale()
                for item in stale:
                    typer.echo(f"{item.name}: {item.path} ({item.collection}): {item.why}")
                if stale:
                    _confirm(f"Purge the documents of these {len(stale)} sources?", yes)
                for item in stale:
                    gone = await syncer.purge(item)
                    typer.echo(f"{item.name}: purged, {len(gone)} documents deleted")
            for name in names or [
                n for n in settings.sources if settings.sources[n].path.exists() or not prune
            ]:
                row = await syncer.sync(name)
                if row is None:
                    typer.echo(f"{name}: being synced by another kbot; skipped")
                    continue
                typer.echo(f"{name}: {row.status}: {row.detail}")
                failed += row.status == "failed"
        finally:
            await kb.close()
        return 1 if failed else 0

    raise typer.Exit(_run(go))
