"""The feedback spool: kept on disk in order, replayed, and adopted from processes that are gone."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from bot.spool import FeedbackSpool
from kbot.errors import StoreError

ROOT = Path(__file__).resolve().parent.parent


def other_process(folder: Path, events: list[dict[str, Any]], *, stay: bool) -> subprocess.Popen[str]:
    """Another kbot process spooling ``events`` into ``folder``: it stays alive (holding its
    file), or is killed before it could replay or close anything."""
    code = textwrap.dedent(
        f"""
        import json, os, signal, sys, time
        from pathlib import Path
        from bot.spool import FeedbackSpool
        spool = FeedbackSpool(Path({str(folder)!r}))
        for event in json.loads({json.dumps(json.dumps(events))}):
            spool.put(event)
        print("spooled", flush=True)
        if {stay!r}:
            sys.stdin.read()
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "spooled"
    return proc


async def test_a_gone_process_s_feedback_is_adopted_and_a_living_one_s_is_left(tmp_path: Path) -> None:
    folder = tmp_path / "spool"
    alive = other_process(folder, [{"n": "alive-1"}], stay=True)
    try:
        dead = other_process(folder, [{"n": "dead-1"}, {"n": "dead-2"}], stay=False)
        dead.wait()
        (folder / "feedback.jsonl").write_text('{"n": "old-version"}\n')  # left by an older kbot
        written: list[Any] = []

        async def apply(event: dict[str, Any]) -> None:
            written.append(event["n"])

        mine = FeedbackSpool(folder)
        mine.put({"n": "mine-1"})
        assert mine.pending == 4  # its own, and the gone processes'; not the living one's
        assert await mine.replay(apply) == 4
        assert sorted(written[:3]) == ["dead-1", "dead-2", "old-version"] and written[3] == "mine-1"
        assert written.index("dead-1") < written.index("dead-2")  # each file in its order
        assert mine.pending == 0
        assert sorted(p.name for p in folder.glob("*.jsonl")) == sorted([mine.path.name, _one(folder, alive)])

        alive.kill()  # now it is gone too, and the next look finds what it left
        alive.wait()
        assert mine.rescan() == 1
        assert await mine.replay(apply) == 1 and written[-1] == "alive-1"
        mine.close()
        assert list(folder.iterdir()) == []  # nothing waits, nothing is left
    finally:
        alive.kill()
        alive.wait()


async def test_a_store_failure_keeps_the_rest_in_order(tmp_path: Path) -> None:
    spool = FeedbackSpool(tmp_path)
    for n in range(4):
        spool.put({"n": n})
    written: list[int] = []

    async def flaky(event: dict[str, Any]) -> None:
        if event["n"] == 2:
            raise StoreError("down again")
        written.append(event["n"])

    assert await spool.replay(flaky) == 2 and spool.pending == 2
    spool.close()  # something waits: the file stays for the next process
    later = FeedbackSpool(tmp_path)
    assert later.pending == 2

    async def ok(event: dict[str, Any]) -> None:
        written.append(event["n"])

    assert await later.replay(ok) == 2 and written == [0, 1, 2, 3]
    later.close()


def _one(folder: Path, proc: subprocess.Popen[str]) -> str:
    [name] = [p.name for p in folder.glob(f"feedback-*-{proc.pid}-*.jsonl")]
    return name


async def test_an_erased_person_s_waiting_feedback_is_never_written(tmp_path: Path) -> None:
    from bot.spool import erase

    spool = FeedbackSpool(tmp_path)
    for n, user in enumerate(["U1", "U2", "U1", "U3"]):
        spool.put({"platform": "slack", "user": user, "n": n})
    assert erase(tmp_path, "slack", "U1") == 2 and erase(tmp_path, "teams", "U2") == 0
    applied: list[Any] = []

    async def apply(event: dict[str, Any]) -> None:
        applied.append(event["n"])

    assert await spool.replay(apply) == 4  # the blanks count as done: positions never shift
    assert applied == [1, 3] and spool.pending == 0
    spool.close()
