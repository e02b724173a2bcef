"""The ``kbot`` command line. Each command builds what it needs from :class:`Settings` and runs it.

Errors kbot raises on purpose (:class:`KbotError`) are printed as one plain sentence with exit
status 2; ``-v`` adds their cause to the log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from bot import db_cli, doctor, golden_cli, knowledge_cli, learning_cli, sources_cli
from kbot.errors import ConfigError, KbotError
from kbot.logs import configure, use_format
from kbot.settings import Settings, load_settings

T = TypeVar("T")
log = logging.getLogger("kbot")

app = typer.Typer(
    name="kbot",
    help="kbot — your company's expert: answers from your documents, cites its sources, "
    "learns from 👍/👎.\n\n"
    "Start with:  kbot ingest docs/ --collection handbook\n\n"
    'then:  kbot search "how do I …" --collection handbook\n\n'
    "Configuration comes from KBOT_* environment variables, a .env file or --config FILE.toml; "
    "by default everything is embedded and kept in ./.kbot (KBOT_DATA_DIR).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class _State:
    config: Path | None = None


_state = _State()


def _split(values: list[str] | None) -> list[str]:
    """Accept both repeated options (--acl a --acl b) and comma lists (--acl a,b)."""
    return [v.strip() for value in values or [] for v in value.split(",") if v.strip()]


def _settings() -> Settings:
    settings = load_settings(_state.config)
    use_format(settings.log_format)
    return settings


def _run(factory: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(factory())  # type: ignore[arg-type]


def _confirm(question: str, yes: bool) -> None:
    """Go on only if ``--yes`` was given or the person says yes; else exit 1, nothing done."""
    if not yes and not typer.confirm(question):
        typer.echo("Nothing deleted.")
        raise typer.Exit(1)


@app.callback()
def _root(
    config: Annotated[
        Path | None,
        typer.Option("--config", help="TOML file with settings (keys are the KBOT_ names, lower-case)."),
    ] = None,
    verbose: Annotated[
        int,
        typer.Option(
            "--verbose",
            "-v",
            count=True,
            help="More log output: -v progress, -vv debug, -vvv debug "
            "with SQL values and Slack message bodies (what people wrote).",
        ),
    ] = 0,
) -> None:
    _state.config = config
    configure(verbose)


@app.command()
def ingest(
    paths: Annotated[list[str], typer.Argument(help="Files or folders (folders are walked recursively).")],
    collection: Annotated[
        str, typer.Option("--collection", "-c", help="Collection to ingest into (created if new).")
    ],
    acl: Annotated[
        list[str] | None,
        typer.Option(
            "--acl",
            help="Group allowed to see these documents; repeat or comma-separate. "
            "Without --acl, everyone may see them.",
        ),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    follow_symlinks: Annotated[
        bool,
        typer.Option(
            "--follow-symlinks",
            help="Follow symbolic links whose target stays inside the folder they are in. "
            "Without it no link is followed; a link that leads out of the folder, or into "
            "/proc, /sys or /dev, is never followed. Skipped links are listed.",
        ),
    ] = False,
) -> None:
    """Add or update documents in a collection.

    Supports Markdown, text, reStructuredText, HTML, PDF and DOCX. Re-running skips unchanged
    files, re-embeds changed ones and removes files deleted from the given folders. Each file is
    saved when done (an interrupted run keeps it); one over 2,000,000 characters fails alone.

    Example:  kbot ingest handbook/ --collection hr --acl hr-team
    """
    from knowledge.base import KnowledgeBase
    from knowledge.ingest import NO_TEXT

    async def go() -> int:
        kb = await KnowledgeBase.open(_settings())
        show = progress and sys.stderr.isatty()
        try:
            report = await kb.ingest(
                paths, collection, _split(acl), progress=show, follow_symlinks=follow_symlinks
            )
        finally:
            await kb.close()
        typer.echo(
            f"{collection}: {len(report.added)} added, {len(report.updated)} updated, "
            f"{len(report.unchanged)} unchanged, {len(report.deleted)} deleted, {len(report.failed)} failed; "
            f"{report.chunks} chunks written in {report.seconds:.1f} s"
        )
        for source, reason in report.failed:
            typer.echo(f"  failed: {source}: {reason}", err=True)
        unsupported = [source for source, reason in report.skipped if reason == "unsupported file type"]
        if unsupported:
            typer.echo(f"  skipped {len(unsupported)} files of unsupported types", err=True)
            for source in unsupported[:5]:
                typer.echo(f"    {source}: unsupported file type", err=True)
        empty = [source for source, reason in report.skipped if reason == NO_TEXT]
        for source in empty:  # read fine, nothing to index (a table of contents): not a failure
            typer.echo(f"  skipped (no text): {source}", err=True)
        for source, reason in report.skipped:  # links and system paths were refused: each is named
            if reason not in ("unsupported file type", NO_TEXT):
                typer.echo(f"  skipped: {source}: {reason}", err=True)
        return 1 if report.failed else 0

    raise typer.Exit(_run(go))


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="What to look for, in any language.")],
    collection: Annotated[
        list[str], typer.Option("--collection", "-c", help="Collection to search; repeatable.")
    ],
    k: Annotated[int, typer.Option("-k", min=1, max=100, help="How many passages to return.")] = 5,
    groups: Annotated[
        list[str] | None,
        typer.Option(
            "--groups",
            "-g",
            help="Groups of the asker (repeat or comma-separate): restricted "
            "documents are returned only to their groups.",
        ),
    ] = None,
    mode: Annotated[str, typer.Option(help="hybrid (default), dense or sparse.")] = "hybrid",
    as_json: Annotated[
        bool,
        typer.Option("--json", help='Print a JSON array of {"score","text","source","title","chunk_id"}.'),
    ] = False,
) -> None:
    """Find the passages that best match a question (hybrid dense + keyword search).

    Example:  kbot search "年假有幾天" --collection hr --groups hr-team
    """
    if mode not in ("hybrid", "dense", "sparse"):
        raise typer.BadParameter("use hybrid, dense or sparse", param_hint="--mode")
    from knowledge.base import KnowledgeBase

    async def go() -> None:
        kb = await KnowledgeBase.open(_settings())
        try:
            hits = await kb.search(query, _split(collection), _split(groups), limit=k, mode=mode)
        finally:
            await kb.close()
        if as_json:
            rows = [
                {
                    "score": h.score,
                    "text": h.text,
                    "source": h.source,
                    "title": h.title,
                    "chunk_id": h.chunk_id,
                }
                for h in hits
            ]
            typer.echo(json.dumps(rows, ensure_ascii=False, indent=2))
            return
        if not hits:
            typer.echo("No matching passages.")
        for rank, hit in enumerate(hits, 1):
            heading = hit.heading.removeprefix(hit.title).removeprefix(" > ")
            where = f" › {heading}" if heading else ""
            typer.echo(f"{rank}. {hit.title}{where}  ({hit.source}, score {hit.score:.3g})")
            snippet = " ".join(hit.text.split())
            typer.echo(f"   {snippet[:300]}{'…' if len(snippet) > 300 else ''}\n")

    _run(go)


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="The question, in any language.")],
    collection: Annotated[
        list[str], typer.Option("--collection", "-c", help="Collection to answer from; repeatable.")
    ],
    groups: Annotated[
        list[str] | None,
        typer.Option("--groups", "-g", help="Groups of the asker (repeat or comma-separate)."),
    ] = None,
    thread: Annotated[
        str, typer.Option(help="Conversation id: questions with the same id are follow-ups of each other.")
    ] = "",
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help='Print {"answer","citations":[{"source","title","quote"}],"model","adapter","answer_id",'
            '"generated" (the model\'s own text; null: no model called),"grounded","grounding" (reasons),'
            '"fallback"}.',
        ),
    ] = False,
) -> None:
    """Answer a question from the documents, with numbered sources, through the configured model.

    Checked against its sources before it is printed: a claim they do not support is replaced by
    their own sentences, cited. Logged with the model's own text and the check's verdict.

    Example:  kbot ask "How many days of annual leave do I get?" --collection hr
    """
    from agent.answering import Answerer, AnswerResult, Question

    async def go() -> int:
        answerer = await Answerer.open(_settings())
        result: AnswerResult | None = None
        try:
            q = Question(
                question, _split(collection), _split(groups), asker="cli", platform="cli", thread=thread
            )
            async for item in answerer.stream(q):
                if isinstance(item, AnswerResult):
                    result = item
                elif isinstance(item, str) and not as_json:
                    typer.echo(item, nl=False)
        finally:
            await answerer.close()
        assert result is not None
        if as_json:
            payload = {
                "answer": result.answer,
                "citations": [
                    {"source": c["source"], "title": c["title"], "quote": c["quote"]}
                    for c in result.citations
                ],
                "model": result.model,
                "adapter": result.adapter,
                "answer_id": result.answer_id,
                "generated": result.generated,
                "grounded": result.grounded,
                "grounding": result.grounding.get("reasons", []),
                "fallback": result.grounding.get("fallback"),
            }
            typer.echo(json.dumps(payload, ensure_ascii=False, indent=2))
        else:
            typer.echo("")
            if result.citations:
                typer.echo("\nSources:")
            for c in result.citations:
                typer.echo(f"  [{c['n']}] {c['title']} ({c['source']})\n      “{c['quote']}”")
        return 1 if result.status == "error" else 0

    raise typer.Exit(_run(go))


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on (default KBOT_SERVER_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on (default KBOT_SERVER_PORT).")] = None,
    slack_socket_mode: Annotated[
        bool,
        typer.Option(
            "--slack-socket-mode",
            help="Receive Slack events over an outbound WebSocket instead of POST /slack/events "
            "(needs KBOT_SLACK_APP_TOKEN); for workspaces that cannot expose a URL.",
        ),
    ] = False,
    nightly: Annotated[
        str | None,
        typer.Option(
            help="Also run the nightly learning job every day at this time (HH:MM), in this process."
        ),
    ] = None,
    prune: Annotated[
        bool,
        typer.Option(
            "--prune",
            help="Purge the documents of [sources] whose folder is gone or that left the settings "
            "(without it they are kept, and named in the log, the dashboard and kbot doctor).",
        ),
    ] = False,
) -> None:
    """Run the chat server: Slack, Teams and the web chat on one port.

    Slack turns on when KBOT_SLACK_SIGNING_SECRET and KBOT_SLACK_BOT_TOKEN are set; point the
    Slack app's Event Subscriptions and Interactivity request URLs at https://HOST/slack/events.
    With the embedded store this server owns the data dir: kbot ingest, search, ask, delete, eval
    and nightly run beside it reach its shard through DATA_DIR/control.sock. [sources] are
    re-synced on their schedules. Liveness: GET /healthz; readiness: GET /readyz.
    Stop with Ctrl-C: answers in flight are finished first.

    Example:  KBOT_SLACK_SIGNING_SECRET=... KBOT_SLACK_BOT_TOKEN=xoxb-... kbot serve --host 0.0.0.0
    """
    from bot.server import parse_time_of_day
    from bot.server import serve as run_server

    settings = _settings()
    if slack_socket_mode and settings.slack_app_token is None:
        raise ConfigError(
            "--slack-socket-mode needs an app-level token: set KBOT_SLACK_APP_TOKEN (xapp-...)."
        )
    if nightly:
        parse_time_of_day(nightly)  # a typo fails now, not after the model has loaded
    logging.getLogger().setLevel(min(logging.getLogger().level, logging.INFO))
    _run(
        lambda: run_server(
            settings,
            host=host or settings.server_host,
            port=settings.server_port if port is None else port,
            socket_mode=slack_socket_mode,
            nightly=nightly,
            prune=prune,
        )
    )


for name, sub_app in (
    ("collections", knowledge_cli.collections_app),
    ("db", db_cli.db_app),
    ("feedback", learning_cli.feedback_app),
    ("train", learning_cli.train_app),
    ("adapters", learning_cli.adapters_app),
    ("golden", golden_cli.golden_app),
    ("sources", sources_cli.sources_app),
):
    app.add_typer(sub_app, name=name)
app.command("delete")(knowledge_cli.delete_command)
app.command("forget")(db_cli.forget_command)
app.command("backup")(db_cli.backup_command)
app.command("restore")(db_cli.restore_command)
app.command("eval")(learning_cli.eval_command)
app.command("nightly")(learning_cli.nightly_command)
app.command("doctor")(doctor.command)


def main() -> None:
    """Console entry point: plain-language errors, causes in the log."""
    try:
        app()
    except KbotError as exc:
        log.debug("error cause", exc_info=exc)
        typer.echo(f"Error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("Interrupted.", err=True)
        sys.exit(130)
