"""``kbot db``: the SQL store; ``kbot forget``: erasing a person from it; ``kbot backup`` and
``kbot restore``: the embedded store copied and put back."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

db_app = typer.Typer(help="The SQL store.", no_args_is_help=True)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the SQL store's tables to the newest version (kbot also does this on start)."""
    from bot.cli import _settings
    from kbot.db import Database

    async def go() -> None:
        settings = _settings()
        db = Database(settings.sql_url)
        try:
            await db.migrate()
        finally:
            await db.close()
        typer.echo(f"SQL store is up to date: {db.display_url}")

    asyncio.run(go())


def forget_command(
    person: Annotated[
        str,
        typer.Argument(
            help="Who, as kbot logs askers: slack:U0123, teams:<AAD object id>, web:alice@example.com."
        ),
    ],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Erase a person: their questions and answers, votes, corrections, conversation memory, events."""
    from agent.answering import Answerer
    from bot.cli import _confirm, _run, _settings
    from bot.privacy import forget, parse_person

    parse_person(person)  # a typo is an error before anything is asked
    _confirm(f"Delete everything kbot keeps of {person}?", yes)

    async def go() -> None:
        answerer = await Answerer.open(_settings())
        try:
            erased = await forget(answerer, person)
        finally:
            await answerer.close()
        typer.echo(f"Forgot {person}: {erased}.")

    _run(go)


def backup_command(
    dest: Annotated[Path, typer.Argument(help="A new (or empty) folder to write the backup into.")],
) -> None:
    """Back up the embedded store while kbot serves: SQLite (online backup), the Qdrant Edge
    shard (writes held back for the copy, searches go on), adapters, golden set, waiting feedback.

    Example:  kbot backup /backups/kbot-$(date +%F)
    """
    from bot.backup import backup
    from bot.cli import _run, _settings

    copied = _run(lambda: backup(_settings(), dest))
    typer.echo(
        f"Backed up to {copied.where}: {', '.join(copied.parts)}; {copied.documents} documents, "
        f"{copied.points} vectors, in {copied.seconds:.1f} s"
    )
    for name in copied.in_flight:  # an ingest was between a file's vectors and its catalog row
        typer.echo(f"  being ingested during the backup, re-embedded by the next ingest: {name}", err=True)


def restore_command(
    source: Annotated[Path, typer.Argument(help="A folder written by kbot backup.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Restore a backup into the data dir (stop kbot serve first). What it replaces is moved
    aside into DATA_DIR/before-restore-<time>/, never deleted.

    Example:  kbot restore /backups/kbot-2026-12-01
    """
    from bot.backup import restore
    from bot.cli import _run, _settings
    from kbot.db import Database

    settings = _settings()
    if (settings.data_dir / "kbot.db").exists():
        question = f"Replace the data in {settings.data_dir} with the backup in {source}?"
        if not yes and not typer.confirm(question):
            typer.echo("Nothing restored.")
            raise typer.Exit(1)

    async def go() -> None:
        parts, aside = await restore(settings, source)
        db = Database(settings.sql_url)
        try:
            await db.migrate()  # a backup from an older kbot is brought up to this one's schema
        finally:
            await db.close()
        typer.echo(f"Restored {', '.join(parts)} into {settings.data_dir}.")
        if aside is not None:
            typer.echo(f"The data it replaced is in {aside}.")

    _run(go)
