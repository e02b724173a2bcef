"""``kbot db``: the SQL store; ``kbot forget``: erasing a person from it."""

from __future__ import annotations

import asyncio
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
