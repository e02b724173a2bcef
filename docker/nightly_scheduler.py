"""Run ``kbot nightly`` every day at one time of day: the nightly service of docker/compose.yaml.

``kbot nightly`` runs once; the daily mode kbot has, ``kbot serve --nightly HH:MM``, schedules the
run inside a chat server, and this container must not serve. So this script schedules the
command with the same trigger as ``serve --nightly`` (an APScheduler cron trigger in the
container's local time zone, ``TZ``). Each run is a new process: the GPU memory training takes
is given back when it ends, and a failing run is logged and does not stop the schedule. Runs
never overlap (the next time is computed when a run has ended; ``kbot nightly`` also holds a lock
in the SQL store). SIGTERM (``docker stop``) reaches a running job as SIGINT, so it can give its
lock back, and then ends the scheduler.

    python nightly_scheduler.py [--at HH:MM] [--now] [-- ARGUMENTS FOR kbot nightly]

Defaults: ``--at`` from ``$NIGHTLY_AT`` (02:00); the arguments from ``$NIGHTLY_ARGS``, split like
a shell would (e.g. ``--gpu --golden /config/golden.jsonl``).
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from datetime import datetime, tzinfo
from types import FrameType

log = logging.getLogger("kbot.nightly_scheduler")
POLL_S = 60.0  # the wall clock is looked at again at least this often (it may jump)


def parse_at(value: str) -> tuple[int, int]:
    """``HH:MM`` → (hour, minute), as ``kbot serve --nightly`` reads it."""
    hour, sep, minute = value.partition(":")
    if not (sep and hour.isdigit() and minute.isdigit() and int(hour) < 24 and int(minute) < 60):
        raise argparse.ArgumentTypeError(f"a time of day like 02:00, not {value!r}")
    return int(hour), int(minute)


def next_run(hour: int, minute: int, now: datetime) -> datetime:
    """The first time at ``hour:minute`` (in ``now``'s time zone) from ``now`` on."""
    from apscheduler.triggers.cron import CronTrigger

    fire: datetime | None = CronTrigger(hour=hour, minute=minute, timezone=now.tzinfo).get_next_fire_time(
        None, now
    )
    if fire is None:  # a daily trigger always has a next time
        raise RuntimeError(f"no next run after {now.isoformat()}")
    return fire


def local_zone() -> tzinfo:
    from tzlocal import get_localzone

    return get_localzone()


class Scheduler:
    def __init__(self, command: Sequence[str], at: tuple[int, int]) -> None:
        self.command = list(command)
        self.at = at
        self.stopping = threading.Event()
        self._child: subprocess.Popen[bytes] | None = None

    def stop(self, signum: int, _frame: FrameType | None = None) -> None:
        log.info("%s: stopping", signal.Signals(signum).name)
        self.stopping.set()
        child = self._child
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGINT)

    def run_once(self) -> int:
        log.info("starting: %s", shlex.join(self.command))
        self._child = subprocess.Popen(self.command)
        if self.stopping.is_set():  # a signal between the check and the start
            self._child.send_signal(signal.SIGINT)
        code = self._child.wait()
        self._child = None
        if code == 0:
            log.info("nightly run finished")
        else:
            log.error("nightly run exited with status %d", code)
        return code

    def loop(self, *, now_first: bool = False) -> None:
        zone = local_zone()
        if now_first and not self.stopping.is_set():
            self.run_once()
        while not self.stopping.is_set():
            due = next_run(*self.at, datetime.now(zone))
            log.info("next nightly run at %s", due.isoformat(timespec="minutes"))
            while not self.stopping.is_set():
                left = (due - datetime.now(zone)).total_seconds()
                if left <= 0:
                    break
                self.stopping.wait(min(left, POLL_S))
            if not self.stopping.is_set():
                self.run_once()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--at",
        type=parse_at,
        default=os.environ.get("NIGHTLY_AT") or "02:00",  # argparse applies `type` to it
        help="time of day, HH:MM in the local time zone (default: $NIGHTLY_AT, else 02:00)",
    )
    parser.add_argument("--now", action="store_true", help="also run once right away")
    parser.add_argument(
        "args", nargs="*", help="arguments for `kbot nightly` (default: $NIGHTLY_ARGS); put -- before them"
    )
    options = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    kbot = shutil.which("kbot")
    if kbot is None:
        log.error("the kbot command is not on PATH")
        return 2
    args = options.args or shlex.split(os.environ.get("NIGHTLY_ARGS", ""))
    scheduler = Scheduler([kbot, "nightly", *args], options.at)
    # As PID 1 in a container, a signal without a handler is ignored: handle both explicitly.
    signal.signal(signal.SIGTERM, scheduler.stop)
    signal.signal(signal.SIGINT, scheduler.stop)
    scheduler.loop(now_first=options.now)
    return 0


if __name__ == "__main__":
    sys.exit(main())
