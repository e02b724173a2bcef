"""``kbot db``: the SQL store."""

from __future__ import annotations

import asyncio

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
