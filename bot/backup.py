"""``kbot backup DIR`` and ``kbot restore DIR``: a consistent copy of the embedded store, and back.

What a data dir holds that cannot be made again: ``kbot.db`` (SQLite: catalog, answers, votes,
corrections, adapters' registry), ``conversations.db`` (thread memory), the Qdrant Edge shard,
``adapters/``, ``golden.jsonl`` and feedback waiting in ``spool/``. (``models/`` is a cache.)

A backup runs while kbot serves. The shard's writes are held back (searches go on) from just
before SQLite's online backup of ``kbot.db`` until its folder is copied, so every catalog row in
the copy has its vectors there. An ingest can be between writing a file's vectors and its catalog
row at that moment; the copy is then checked against its own catalog: vectors no catalog row
names are dropped, and a document whose vectors are not all there is marked to be re-embedded by
the next ``kbot ingest``. A PostgreSQL or Qdrant server has its own tools (``pg_dump``,
snapshots); this covers the embedded store.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from kbot import __version__
from kbot.errors import ConfigError
from kbot.settings import Settings
from knowledge.base import open_vector_store
from knowledge.vectorstore.edge import EdgeVectorStore
from knowledge.vectorstore.shared import server_listening, socket_path
from knowledge.verified import TENANT

MANIFEST = "kbot-backup.json"
DATABASES = ("kbot.db", "conversations.db")
FILES = ("adapters", "golden.jsonl", "spool")


@dataclass
class Copied:
    where: Path
    points: int = 0
    documents: int = 0
    in_flight: list[str] = field(default_factory=list)  # documents to be re-embedded
    parts: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _embedded(settings: Settings) -> None:
    if settings.database_url or settings.qdrant_url:
        raise ConfigError(
            "kbot backup and restore cover the embedded store (SQLite and Qdrant Edge in KBOT_DATA_DIR). "
            "Back up PostgreSQL with pg_dump and a Qdrant server with its snapshots."
        )


async def backup(settings: Settings, dest: Path) -> Copied:
    """Copy ``settings.data_dir`` into the new folder ``dest``, consistently, while kbot runs."""
    _embedded(settings)
    data = settings.data_dir
    if not (data / "kbot.db").is_file():
        raise ConfigError(f"{data} holds no kbot data yet (no kbot.db); nothing to back up.")
    if dest.exists() and any(dest.iterdir()):
        raise ConfigError(f"{dest} is not empty; back up into a new folder.")
    started = time.monotonic()
    dest.mkdir(parents=True, exist_ok=True)
    report = Copied(dest)
    store = open_vector_store(settings)  # the server's shard through its socket, or ours
    shard_name = settings.qdrant_collection
    try:
        async with store.frozen() as shard:  # type: ignore[attr-defined]
            for name in DATABASES:
                if (data / name).is_file():
                    await asyncio.to_thread(_sqlite_copy, data / name, dest / name)
                    report.parts.append(name)
            if shard is not None:
                await asyncio.to_thread(shutil.copytree, shard, dest / "qdrant" / shard_name)
                report.parts.append("qdrant")
    finally:
        await store.close()
    for name in FILES:
        source = data / name
        if source.is_dir():
            await asyncio.to_thread(shutil.copytree, source, dest / name)
        elif source.is_file():
            shutil.copy2(source, dest / name)
        else:
            continue
        report.parts.append(name)
    if "qdrant" in report.parts:
        await _check_copy(dest, shard_name, report)
    manifest = {
        "kbot": __version__,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "data_dir": str(data.resolve()),
        "qdrant_collection": shard_name,
        "parts": report.parts,
        "points": report.points,
        "documents": report.documents,
        "in_flight": report.in_flight,
    }
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    report.seconds = time.monotonic() - started
    return report


def _sqlite_copy(source: Path, dest: Path) -> None:
    """SQLite's online backup: a consistent copy while other connections read and write."""
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30)
    try:
        out = sqlite3.connect(dest)
        try:
            src.backup(out)
        finally:
            out.close()
    finally:
        src.close()


async def _check_copy(dest: Path, shard_name: str, report: Copied) -> None:
    """Make the copied shard and the copied catalog agree (see the module's docstring)."""
    shard = EdgeVectorStore(dest / "qdrant" / shard_name)
    await shard.load()
    try:
        points = await shard.points()
        chunks, sources = await asyncio.to_thread(_catalog_chunks, dest / "kbot.db")
        stray = [pid for pid, collection in points.items() if collection != TENANT and pid not in chunks]
        await shard.delete_points(stray)
        partial = sorted({chunks[c] for c in chunks if c not in points})
        if partial:
            await asyncio.to_thread(_mark_for_reembedding, dest / "kbot.db", partial)
        report.in_flight = [sources[d] for d in partial]
        report.points, report.documents = len(points) - len(stray), len(set(chunks.values()))
    finally:
        await shard.close()


def _catalog_chunks(db: Path) -> tuple[dict[str, int], dict[int, str]]:
    conn = sqlite3.connect(db)
    try:
        chunks = dict(conn.execute("SELECT id, document_id FROM chunks").fetchall())
        sources = {i: f"{c}: {s}" for i, c, s in conn.execute("SELECT id, collection, source FROM documents")}
    finally:
        conn.close()
    return chunks, sources


def _mark_for_reembedding(db: Path, documents: list[int]) -> None:
    conn = sqlite3.connect(db)
    try:
        with conn:
            conn.executemany("UPDATE documents SET content_hash = '' WHERE id = ?", [(d,) for d in documents])
    finally:
        conn.close()


async def restore(settings: Settings, source: Path) -> tuple[list[str], Path | None]:
    """Put the backup in ``source`` in place of ``settings.data_dir``'s data; what was restored,
    and where the data it replaced was moved (nothing is deleted)."""
    _embedded(settings)
    manifest_path = source / MANIFEST
    if not manifest_path.is_file():
        raise ConfigError(f"{source} is not a kbot backup (no {MANIFEST}).")
    manifest = json.loads(manifest_path.read_text())
    data = settings.data_dir
    if server_listening(socket_path(data)):
        raise ConfigError(f"kbot serve runs on {data}: stop it, restore, then start it again.")
    if manifest.get("qdrant_collection", settings.qdrant_collection) != settings.qdrant_collection:
        raise ConfigError(
            f"The backup's vectors are in Qdrant collection {manifest['qdrant_collection']!r}; "
            f"set KBOT_QDRANT_COLLECTION={manifest['qdrant_collection']} to restore it."
        )
    parts = [p for p in (*DATABASES, "qdrant", *FILES) if (source / p).exists()]
    data.mkdir(parents=True, exist_ok=True)
    present = [p for p in (*DATABASES, "qdrant", *FILES) if (data / p).exists()]
    aside = None
    if present:
        aside = data / f"before-restore-{datetime.now(UTC):%Y%m%dT%H%M%S}"
        aside.mkdir()
        for name in present:
            (data / name).rename(aside / name)
        for extra in ("kbot.db-wal", "kbot.db-shm", "conversations.db-wal", "conversations.db-shm"):
            if (data / extra).exists():
                (data / extra).rename(aside / extra)
    for name in parts:
        if (source / name).is_dir():
            await asyncio.to_thread(shutil.copytree, source / name, data / name)
        else:
            shutil.copy2(source / name, data / name)
    old = manifest.get("data_dir")
    if old and old != str(data.resolve()) and (data / "kbot.db").is_file():
        await asyncio.to_thread(_move_adapter_paths, data / "kbot.db", old, str(data.resolve()))
    return parts, aside


def _move_adapter_paths(db: Path, old: str, new: str) -> None:
    """Adapters are registered by absolute path: point them into the data dir they now live in."""
    conn = sqlite3.connect(db)
    try:
        with conn:
            conn.execute(
                "UPDATE adapters SET path = ? || substr(path, ?) WHERE substr(path, 1, ?) = ?",
                (new, len(old) + 1, len(old), old),
            )
    finally:
        conn.close()
