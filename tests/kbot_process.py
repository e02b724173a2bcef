"""Running the real `kbot` command in a child process, as users and scripts do."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

KBOT = [sys.executable, "-c", "from bot.cli import main; main()"]


def kbot(
    *args: str, cwd: Path, env: dict[str, str], input: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*KBOT, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300, input=input
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_healthy(
    url: str,
    proc: subprocess.Popen[str],
    *,
    timeout: float = 180,
    log: Path | None = None,
    path: str = "/healthz",
) -> dict[str, object]:
    """Until ``kbot serve`` at ``url`` answers ``path`` with 200 (``/readyz``: ready to answer);
    its body. The server exiting first fails, with its log (``log``, else its piped stderr)."""
    import asyncio
    import time

    import aiohttp

    def said() -> str:
        if log is not None:
            return log.read_text()
        return proc.stderr.read() if proc.stderr else "kbot serve exited"

    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            assert proc.poll() is None, said()
            try:
                async with session.get(url + path) as response:
                    if response.status == 200:
                        return dict(await response.json())
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.3)
    raise AssertionError(f"kbot serve did not answer {path}")
