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
