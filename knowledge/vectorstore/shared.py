"""One owner of the embedded shard, every command still works: the vector-store port over a socket.

A Qdrant Edge shard can be open in one process only. ``kbot serve`` owns it and, beside it,
listens on ``DATA_DIR/control.sock`` (a Unix socket: mode 0600, and a peer of another user is
refused by its credentials). A command run while the server is up (``kbot ingest``, ``search``,
``ask``, ``eval``, ``nightly``, ``delete``, ``collections delete``) finds the socket answering
and gets a :class:`SharedShardStore`: the same port, every call carried out by the server on its
shard. Reading files, embedding, the model and the output stay in the command's own process, so
its output, progress bar and exit status are what they are when it runs alone, and answering in
the server never waits behind an embedding job. With a Qdrant server configured nothing of this
is used: every process talks to that server.

The wire is one JSON object per line each way: ``{"op", "args"}`` → ``{"ok"}`` or ``{"error"}``.
Dense vectors travel as base64 float32.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kbot.errors import ConfigError, KbotError, VectorStoreError
from knowledge.sparse import SparseVector
from knowledge.vectorstore import ChunkPayload, ChunkRecord, Hit, SearchQuery, VectorStore

log = logging.getLogger(__name__)
SOCKET_NAME = "control.sock"
# One upsert carries a slice of ~512 chunks: ~1 MB of vectors, a few MB of text at most.
LINE_LIMIT = 256 * 1024**2
# A backup's copy of the shard holds its writes back; one that hangs without hanging up (a
# stopped process, a stalled disk) must not stop ingests for good. Ten minutes copy tens of GB.
FREEZE_LIMIT_S = 600.0
# sun_path holds 108 bytes; a longer path is reached through the data dir's open descriptor.
_SUN_PATH_MAX = 100


def socket_path(data_dir: Path) -> Path:
    return data_dir / SOCKET_NAME


def server_listening(path: Path) -> bool:
    """Whether a kbot server answers on ``path`` (a socket left by a killed server does not)."""
    if not path.is_socket():
        return False
    if path.stat().st_uid != os.getuid():
        return False  # someone else's socket is nobody we hand the shard work to
    with _addressable(path) as address, socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(2)
        try:
            probe.connect(address)
        except OSError:
            return False
    return True


class SharedShardStore:
    """The :class:`VectorStore` port, carried out by the ``kbot serve`` that owns the shard."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._lock = asyncio.Lock()

    async def prepare(self, dimension: int) -> None:
        await self._call("prepare", {"dimension": dimension})

    async def upsert(self, records: Sequence[ChunkRecord]) -> None:
        await self._call("upsert", {"records": [_record_out(r) for r in records]})

    async def delete_document(self, collection: str, source: str, keep: Sequence[str] = ()) -> None:
        await self._call("delete_document", {"collection": collection, "source": source, "keep": list(keep)})

    async def delete_collection(self, collection: str) -> None:
        await self._call("delete_collection", {"collection": collection})

    async def search(self, query: SearchQuery) -> list[Hit]:
        rows = await self._call("search", {"query": _query_out(query)})
        return [Hit(**{**row, "acl": tuple(row["acl"])}) for row in rows]

    async def count(self, collection: str) -> int:
        return int(await self._call("count", {"collection": collection}))

    async def optimize(self) -> None:
        await self._call("optimize", {})

    @contextlib.asynccontextmanager
    async def frozen(self) -> AsyncIterator[Path | None]:
        """The server's shard, flushed, its writes held back until exit or until this hangs up
        (a backup that dies never leaves the server frozen)."""
        path = await self._call("freeze", {})
        try:
            yield None if path is None else Path(path)
        finally:
            await self._call("thaw", {})

    async def close(self) -> None:
        """Hang up; the shard stays open in the server."""
        if self._streams is not None:
            _, writer = self._streams
            self._streams = None
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _call(self, op: str, args: dict[str, Any]) -> Any:
        async with self._lock:
            reader, writer = await self._connect()
            try:
                writer.write(json.dumps({"op": op, "args": args}).encode() + b"\n")
                await writer.drain()
                line = await reader.readline()
            except (OSError, asyncio.LimitOverrunError, ValueError) as exc:
                self._streams = None
                raise self._gone() from exc
            if not line:
                self._streams = None
                raise self._gone()
            reply = json.loads(line)
        if "error" in reply:
            raise VectorStoreError(reply["error"])
        return reply["ok"]

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._streams is None:
            try:
                with _addressable(self._path) as address:
                    self._streams = await asyncio.open_unix_connection(address, limit=LINE_LIMIT)
            except OSError as exc:
                raise self._gone() from exc
        return self._streams

    def _gone(self) -> VectorStoreError:
        return VectorStoreError(
            f"The kbot server that owns this data dir ({self._path.parent}) stopped answering on "
            f"{self._path.name}; run the command again (alone, or once the server is back)."
        )


class ShardHost:
    """Serve a vector store (the server's own Edge shard) to this user's kbot commands."""

    def __init__(self, data_dir: Path, *, freeze_limit_s: float = FREEZE_LIMIT_S) -> None:
        self._path = socket_path(data_dir)
        self._freeze_limit_s = freeze_limit_s
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[None]] = set()
        self._ops: dict[str, Callable[[VectorStore, dict[str, Any]], Awaitable[Any]]] = {
            "prepare": lambda store, a: store.prepare(int(a["dimension"])),
            "upsert": lambda store, a: store.upsert([_record_in(r) for r in a["records"]]),
            "delete_document": lambda store, a: store.delete_document(
                a["collection"], a["source"], a["keep"]
            ),
            "delete_collection": lambda store, a: store.delete_collection(a["collection"]),
            "search": _search,
            "count": lambda store, a: store.count(a["collection"]),
            "optimize": lambda store, a: store.optimize(),
        }

    def check(self) -> None:
        """Fail when another server owns this data dir (called before anything heavy loads)."""
        if server_listening(self._path):
            raise ConfigError(
                f"Another kbot server already runs on {self._path.parent} (it answers on {self._path}). "
                "Stop it first, or give this one its own KBOT_DATA_DIR."
            )

    async def start(self, store: VectorStore) -> None:
        self.check()
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()  # left by a server that was killed
        old = os.umask(0o177)  # never a moment when others could connect
        try:
            with _addressable(self._path) as address:
                self._server = await asyncio.start_unix_server(
                    lambda r, w: self._serve(store, r, w), address, limit=LINE_LIMIT
                )
        finally:
            os.umask(old)
        os.chmod(self._path, 0o600)
        log.info("kbot commands on this data dir reach its vector store through %s", self._path)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._clients):  # a command mid-run hears "stopped", not silence
                task.cancel()
            await asyncio.gather(*self._clients, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None
            with contextlib.suppress(FileNotFoundError):
                self._path.unlink()

    async def _serve(
        self, store: VectorStore, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        try:
            if _peer_uid(writer) != os.getuid():
                log.warning("refused a control connection from another user")
                return
            # A freeze (a backup's copy) lasts until thawed or until its connection goes.
            async with _Freeze(store, self._freeze_limit_s) as frozen:
                while line := await reader.readline():
                    answer = await self._answer(store, line, frozen)
                    writer.write(json.dumps(answer, ensure_ascii=False).encode() + b"\n")
                    await writer.drain()
        except (OSError, asyncio.LimitOverrunError, ValueError):
            log.info("a kbot command hung up mid-request")
        finally:
            self._clients.discard(task)
            writer.close()

    async def _answer(self, store: VectorStore, line: bytes, frozen: _Freeze) -> dict[str, Any]:
        try:
            request = json.loads(line)
            if request["op"] == "freeze":
                return {"ok": await frozen.freeze()}
            if request["op"] == "thaw":
                return {"ok": None} if await frozen.thaw() else {"error": frozen.expired}
            op = self._ops[request["op"]]
            return {"ok": await op(store, request["args"])}
        except KbotError as exc:
            return {"error": str(exc)}
        except (ValueError, KeyError, TypeError) as exc:
            return {"error": f"Malformed control request: {exc!r}"}


async def _search(store: VectorStore, args: dict[str, Any]) -> list[dict[str, Any]]:
    hits = await store.search(_query_in(args["query"]))
    return [{**hit.__dict__, "acl": list(hit.acl)} for hit in hits]


class _Freeze:
    """One connection's freeze of the shard: at most one, ended by thaw, by hanging up, or after
    ``limit_s`` (then the thaw that comes late is told the copy may be inconsistent)."""

    def __init__(self, store: VectorStore, limit_s: float) -> None:
        self._store = store
        self._limit_s = limit_s
        self._stack: contextlib.AsyncExitStack | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._ending: set[asyncio.Task[bool]] = set()
        self.expired = ""

    async def freeze(self) -> str | None:
        freeze = getattr(self._store, "frozen", None)  # the Edge shard's; a Qdrant server has snapshots
        if freeze is None:
            raise VectorStoreError("This vector store cannot be frozen for a copy.")
        if self._stack is not None:
            raise VectorStoreError("The shard is already frozen for this connection.")
        self._stack = contextlib.AsyncExitStack()
        path = await self._stack.enter_async_context(freeze())
        self.expired = ""
        self._timer = asyncio.get_running_loop().call_later(self._limit_s, self._expire)
        return None if path is None else str(path)

    def _expire(self) -> None:
        self.expired = (
            f"The shard's writes were held back for the copy longer than {self._limit_s:.0f} s, so "
            "kbot serve let them go on: writes during the rest of the copy may be missing from it. "
            "Take the backup again."
        )
        log.warning("a backup kept the shard frozen over %.0f s without thawing; writes go on", self._limit_s)
        task = asyncio.ensure_future(self.thaw())
        self._ending.add(task)
        task.add_done_callback(self._ending.discard)

    async def thaw(self) -> bool:
        """End the freeze; False when it had run out before."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()
        return not self.expired

    async def __aenter__(self) -> _Freeze:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.thaw()


def _peer_uid(writer: asyncio.StreamWriter) -> int:
    sock = writer.get_extra_info("socket")
    if not hasattr(socket, "SO_PEERCRED"):
        return os.getuid()  # no peer credentials here (macOS): the socket's 0600 mode decides
    _, uid, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    return int(uid)


@contextlib.contextmanager
def _addressable(path: Path) -> Any:
    """A name for ``path`` that fits in sun_path: itself, or via the folder's descriptor."""
    if len(os.fsencode(path)) <= _SUN_PATH_MAX or not Path("/proc/self/fd").is_dir():
        yield str(path)
        return
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def _vector_out(values: np.ndarray | Sequence[float]) -> str:
    return base64.b64encode(np.asarray(values, dtype=np.float32).tobytes()).decode()


def _vector_in(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype=np.float32)


def _sparse_out(vector: SparseVector | None) -> dict[str, list[Any]] | None:
    return None if vector is None else {"indices": list(vector.indices), "values": list(vector.values)}


def _sparse_in(data: dict[str, list[Any]] | None) -> SparseVector | None:
    return None if data is None else SparseVector([int(i) for i in data["indices"]], data["values"])


def _record_out(record: ChunkRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "dense": _vector_out(record.dense),
        "sparse": _sparse_out(record.sparse),
        "payload": dict(record.payload),
    }


def _record_in(data: dict[str, Any]) -> ChunkRecord:
    sparse = _sparse_in(data["sparse"])
    assert sparse is not None
    payload: ChunkPayload = data["payload"]
    return ChunkRecord(id=str(data["id"]), dense=_vector_in(data["dense"]), sparse=sparse, payload=payload)


def _query_out(query: SearchQuery) -> dict[str, Any]:
    return {
        "collections": list(query.collections),
        "groups": list(query.groups),
        "limit": query.limit,
        "dense": None if query.dense is None else _vector_out(query.dense),
        "sparse": _sparse_out(query.sparse),
        "prefetch": query.prefetch,
        "dense_weight": query.dense_weight,
    }


def _query_in(data: dict[str, Any]) -> SearchQuery:
    dense = data["dense"]
    return SearchQuery(
        collections=[str(c) for c in data["collections"]],
        groups=[str(g) for g in data["groups"]],
        limit=int(data["limit"]),
        dense=None if dense is None else _vector_in(dense).tolist(),
        sparse=_sparse_in(data["sparse"]),
        prefetch=int(data["prefetch"]),
        dense_weight=float(data["dense_weight"]),
    )
