"""``kbot collections`` (list, delete) and ``kbot delete``: taking knowledge out again.

A deleted document's vectors (dense and keyword) and catalog rows go; answers already logged
keep the ids of the chunks they used, which no longer resolve to any document.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

collections_app = typer.Typer(
    help="List collections (the default) or delete one.", invoke_without_command=True, no_args_is_help=False
)


@collections_app.callback()
def collections(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List collections with their document and chunk counts; `kbot collections delete NAME` removes one."""
    if ctx.invoked_subcommand is not None:
        return
    from bot.cli import _run, _settings
    from kbot.db import Database
    from knowledge.catalog import Catalog

    async def go() -> None:
        db = Database(_settings().sql_url)
        try:
            await db.migrate()
            stats = await Catalog(db).stats()
        finally:
            await db.close()
        if as_json:
            typer.echo(json.dumps([s.__dict__ for s in stats], indent=2))
            return
        if not stats:
            typer.echo("No collections yet. Create one with: kbot ingest PATH --collection NAME")
            return
        width = max(len(s.name) for s in stats)
        typer.echo(f"{'COLLECTION':<{width}}  {'DOCUMENTS':>9}  {'CHUNKS':>8}  MODEL")
        for s in stats:
            typer.echo(f"{s.name:<{width}}  {s.documents:>9}  {s.chunks:>8}  {s.embedding_model}")

    _run(go)


@collections_app.command("delete")
def delete_collection(
    name: Annotated[str, typer.Argument(help="The collection to delete, with every document in it.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete a collection: its documents, chunks and vectors. Logged answers keep their chunk ids."""
    from bot.cli import _confirm, _run, _settings
    from knowledge.base import KnowledgeBase

    _confirm(f"Delete collection {name!r} and every document in it?", yes)

    async def go() -> None:
        kb = await KnowledgeBase.open(_settings())
        try:
            gone = await kb.delete_collection(name)
        finally:
            await kb.close()
        typer.echo(f"Deleted collection {name}: {gone.documents} documents, {gone.chunks} chunks.")

    _run(go)


def delete_command(
    paths: Annotated[
        list[str], typer.Argument(help="Files, or folders (every document under them), as ingested.")
    ],
    collection: Annotated[
        str, typer.Option("--collection", "-c", help="The collection to delete them from.")
    ],
) -> None:
    """Delete documents from a collection (files on disk stay). Exit status 1: a path matched nothing."""
    from bot.cli import _run, _settings
    from knowledge.base import KnowledgeBase

    async def go() -> int:
        kb = await KnowledgeBase.open(_settings())
        try:
            gone = await kb.delete(paths, collection)
        finally:
            await kb.close()
        total = sum(len(sources) for sources in gone.values())
        typer.echo(f"{collection}: {total} document{'s' if total != 1 else ''} deleted")
        for sources in gone.values():
            for source in sources:
                typer.echo(f"  deleted: {source}")
        missing = [path for path, sources in gone.items() if not sources]
        for path in missing:
            typer.echo(f"  not in {collection}: {path}", err=True)
        return 1 if missing else 0

    raise typer.Exit(_run(go))
