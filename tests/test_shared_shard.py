"""The embedded shard's one owner and the commands that reach it through its control socket."""

from __future__ import annotations

import asyncio
import json
import socket
import stat
from pathlib import Path

import pytest

from kbot.errors import ConfigError, VectorStoreError
from knowledge.vectorstore.edge import EdgeVectorStore
from knowledge.vectorstore.shared import ShardHost, SharedShardStore, server_listening, socket_path
from tests.test_vectorstore_contract import DIM, record


async def test_socket_is_owner_only_and_a_second_owner_is_refused(tmp_path: Path) -> None:
    owned = EdgeVectorStore(tmp_path / "shard")
    host = ShardHost(tmp_path)
    await host.start(owned)
    try:
        path = socket_path(tmp_path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert server_listening(path)
        with pytest.raises(ConfigError, match="Another kbot server already runs on"):
            ShardHost(tmp_path).check()
    finally:
        await host.close()
    assert not path.exists() and not server_listening(path)


async def test_a_socket_left_by_a_killed_server_is_replaced(tmp_path: Path) -> None:
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(socket_path(tmp_path)))
    stale.close()  # bound, never listening: what SIGKILL leaves
    assert not server_listening(socket_path(tmp_path))
    owned = EdgeVectorStore(tmp_path / "shard")
    host = ShardHost(tmp_path)
    await host.start(owned)
    client = SharedShardStore(socket_path(tmp_path))
    try:
        await client.prepare(4)
        assert await client.count("hr") == 0
    finally:
        await client.close()
        await host.close()
        await owned.close()


async def test_long_data_dir_paths_and_malformed_requests(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)  # past sun_path's 108 bytes
    deep.mkdir(parents=True)
    owned = EdgeVectorStore(deep / "shard")
    host = ShardHost(deep)
    await host.start(owned)
    try:
        assert server_listening(socket_path(deep))
        fd_dir = f"/proc/self/fd/{__import__('os').open(deep, 0)}"
        reader, writer = await asyncio.open_unix_connection(f"{fd_dir}/control.sock")
        writer.write(b'{"op": "drop_everything", "args": {}}\nnot json\n')
        await writer.drain()
        first, second = json.loads(await reader.readline()), json.loads(await reader.readline())
        assert first["error"].startswith("Malformed control request") and "error" in second
        writer.close()
    finally:
        await host.close()
        await owned.close()


async def test_a_server_that_stops_mid_run_is_a_plain_error(tmp_path: Path) -> None:
    owned = EdgeVectorStore(tmp_path / "shard")
    host = ShardHost(tmp_path)
    await host.start(owned)
    client = SharedShardStore(socket_path(tmp_path))
    await client.prepare(4)
    await host.close()
    with pytest.raises(VectorStoreError, match=r"stopped answering on control\.sock; run the command again"):
        await client.count("hr")
    await client.close()
    await owned.close()


async def test_a_backup_that_hangs_frozen_does_not_stop_writes_for_good(tmp_path: Path) -> None:
    owned = EdgeVectorStore(tmp_path / "shard")
    host = ShardHost(tmp_path, freeze_limit_s=0.3)
    await host.start(owned)
    backup, ingest = SharedShardStore(socket_path(tmp_path)), SharedShardStore(socket_path(tmp_path))
    try:
        await ingest.prepare(DIM)
        with pytest.raises(VectorStoreError, match="Take the backup again"):
            async with backup.frozen():
                # Held back while the copy is frozen, then let through once the freeze ran out.
                await asyncio.wait_for(ingest.upsert([record(1, "Parking closes at ten.")]), timeout=30)
                assert await ingest.count("hr") == 1
        async with backup.frozen():  # the next backup freezes and thaws as usual
            pass
    finally:
        await backup.close()
        await ingest.close()
        await host.close()
        await owned.close()
