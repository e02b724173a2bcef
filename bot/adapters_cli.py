"""``kbot adapters``: list versions, promote one (behind the evaluation gate), roll back, show history.

``bot/learning_cli.py`` re-exports :data:`adapters_app`; ``cli.py`` mounts it from there.
"""

from __future__ import annotations

import asyncio
import getpass
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

if TYPE_CHECKING:
    from agent.adapters import AdapterRegistry

T = TypeVar("T")

adapters_app = typer.Typer(
    help="LoRA adapter versions: list, promote, roll back, history.", no_args_is_help=True
)


def operator(command: str) -> str:
    """Who did it, for the promotion history and the gate's verdict: the command and the OS user."""
    try:
        return f"{command} ({getpass.getuser()})"
    except (OSError, KeyError):  # no login name (a container without a passwd entry)
        return command


def _with_registry(use: Callable[[AdapterRegistry], Awaitable[T]]) -> T:
    from agent.adapters import AdapterRegistry
    from bot.cli import _settings
    from kbot.db import Database

    settings = _settings()

    async def go() -> T:
        db = Database(settings.sql_url)
        try:
            await db.migrate()
            return await use(AdapterRegistry(db))
        finally:
            await db.close()

    return asyncio.run(go())


def _gate_note(scores: dict[str, object]) -> str:
    gate = scores.get("gate")
    if not isinstance(gate, dict):
        return "gate: not evaluated"
    return f"gate: {'passed' if gate.get('passed') else 'refused'} vs {gate.get('against')}"


@adapters_app.command("list")
def adapters_list() -> None:
    """Adapter versions, oldest first; * marks the active one, with each one's last evaluation."""
    rows = _with_registry(lambda r: r.list())
    if not rows:
        typer.echo("No adapters yet: the base model answers. Train one with: kbot train dpo FILE")
        return
    for a in rows:
        loss = a.training.get("final_loss")
        scores = ", ".join(f"{k}={v}" for k, v in sorted(a.scores.items()) if isinstance(v, int | float))
        scores = f"{scores}  " if scores else ""
        typer.echo(
            f"{'*' if a.active else ' '} {a.version}  {a.training.get('kind', '?')}  "
            f"loss={loss if loss is not None else '-'}  {scores}{_gate_note(a.scores)}"
        )


@adapters_app.command("promote")
def adapters_promote(
    version: Annotated[str, typer.Argument(help="The version to make active.")],
    force: Annotated[
        bool,
        typer.Option(help="Promote without a passing evaluation against the active version (recorded)."),
    ] = False,
) -> None:
    """Make VERSION the active adapter. Running servers answer with it from their next answer on.

    VERSION needs a passing evaluation against the version active now (kbot eval VERSION --golden
    FILE records it); --force skips that check, and the history says so.
    """
    by = operator("kbot adapters promote")
    previous = _with_registry(lambda r: r.promote(version, by=by, forced=force))
    was = f"was: {previous}" if previous else "the base model answered before"
    typer.echo(f"{version} is now active ({was}){'; forced, without a passing evaluation' if force else ''}.")


@adapters_app.command("rollback")
def adapters_rollback(
    to: Annotated[
        str | None,
        typer.Option(help="Go back to this earlier promoted version (base: the base model)."),
    ] = None,
) -> None:
    """Go back to the adapter promoted before the active one; repeat to walk further back.

    After promoting v1, v2, v3, rollbacks return to v2, v1 and then the base model; with the base
    model active and nothing earlier, rollback is refused. --to jumps to any version below the
    active one in the history (kbot adapters history).
    """
    by = operator("kbot adapters rollback")
    version = _with_registry(lambda r: r.rollback(to=to, by=by))
    typer.echo(
        f"Rolled back: {version} is active again." if version else "Rolled back: the base model answers now."
    )


@adapters_app.command("history")
def adapters_history() -> None:
    """Every promotion and rollback, oldest first: when, what became active, what it replaced, who."""
    rows = _with_registry(lambda r: r.history())
    if not rows:
        typer.echo(
            "No promotions yet: the base model answers. Promote one with: kbot adapters promote VERSION"
        )
        return
    for p in rows:
        forced = "  forced" if p.forced else ""
        typer.echo(
            f"{p.at:%Y-%m-%d %H:%M:%S}  {p.kind:<8}  {p.version or 'base'}  "
            f"(was {p.previous or 'base'})  by {p.by or '?'}{forced}"
        )
