"""``kbot golden``: the golden set the nightly gate judges candidate adapters on."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

golden_app = typer.Typer(
    help="The golden set: questions with the facts a right answer states. Without one, the nightly "
    "run trains and reports but promotes nothing.",
    no_args_is_help=True,
)
_FILE = typer.Option("--file", help="Golden JSONL (default: KBOT_DATA_DIR/golden.jsonl, what nightly reads).")


def _path(file: Path | None) -> Path:
    from bot.cli import _settings
    from finetune.golden import golden_path

    return file or golden_path(_settings().data_dir)


@golden_app.command("add")
def add_command(
    question: Annotated[str, typer.Argument(help="The question, as employees ask it.")],
    fact: Annotated[
        list[str], typer.Option("--fact", "-f", help="A fact a right answer states (repeat for more).")
    ],
    collection: Annotated[list[str], typer.Option("--collection", "-c", help="Collection(s) to search.")],
    file: Annotated[Path | None, _FILE] = None,
) -> None:
    """Add a golden question. A fact that is a quantity also counts in another notation
    (10 days = ten days = 十天).

    Example:  kbot golden add "How many vacation days do I get?" -f "25 days" -c hr
    """
    from finetune.golden import add

    path = _path(file)
    added = add(path, question, collection, fact)
    typer.echo(f"Added to {path}." if added else f"{path} already has this question; left as it is.")


@golden_app.command("from-corrections")
def from_corrections_command(file: Annotated[Path | None, _FILE] = None) -> None:
    """Add the questions of approved corrections, with the quantities they state as facts.

    Example:  kbot golden from-corrections && kbot golden list
    """
    from bot.cli import _settings
    from finetune.golden import FromCorrections, from_corrections
    from kbot.db import Database

    settings = _settings()
    path = file or _path(None)

    async def go() -> FromCorrections:
        db = Database(settings.sql_url)
        try:
            await db.migrate()
            return await from_corrections(db, path)
        finally:
            await db.close()

    outcome = asyncio.run(go())
    typer.echo(
        f"{outcome.added} question(s) added to {path}; {outcome.known} already there; "
        f"{outcome.without_facts} approved correction(s) state no quantity: add those with "
        "`kbot golden add QUESTION -f FACT -c COLLECTION`."
    )


@golden_app.command("list")
def list_command(file: Annotated[Path | None, _FILE] = None) -> None:
    """The golden questions and their facts."""
    from finetune.golden import read_rows

    path = _path(file)
    rows = [r for r in read_rows(path) if "question" in r]
    if not rows:
        typer.echo(f"No golden questions in {path}. Add one: kbot golden add QUESTION -f FACT -c COLLECTION")
        return
    for r in rows:
        typer.echo(
            f"{r['question']}  [{', '.join(r.get('collections', []))}]  facts: {', '.join(r['facts'])}"
        )
