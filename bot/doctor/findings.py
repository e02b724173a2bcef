"""What a ``kbot doctor`` check reports, and the helpers every check shares."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from kbot.settings import Settings

if TYPE_CHECKING:
    from kbot.db import Database

T = TypeVar("T")
Status = Literal["ok", "warn", "fail", "off"]


@dataclass(frozen=True)
class Result:
    check: str
    status: Status
    detail: str
    fix: str = ""


class Finding(Exception):
    """What a check found instead of "ok": raised at the first problem, so a check reads top-down."""

    def __init__(self, status: Status, detail: str, fix: str = "") -> None:
        super().__init__(detail)
        self.status, self.detail, self.fix = status, detail, fix


@dataclass
class Probe:
    """The settings, plus what earlier checks found that later ones need."""

    settings: Settings
    teams_credentials: Any = None  # as for ``bot.server.open_runtime``
    db: Database | None = None  # set when the SQL store is reachable and at the newest schema
    fresh: bool = False  # the embedded SQLite file does not exist yet: nothing is stored anywhere
    no_vectors: bool = False  # the vector store is reachable and has no kbot collection
    served: list[str] = field(default_factory=list)  # model ids the OpenAI-compatible server lists


async def in_thread(fn: Callable[[], T]) -> T:
    """``fn`` in a daemon thread: one stuck past its time limit (MSAL sets none) must not hold up exit."""
    done: concurrent.futures.Future[T] = concurrent.futures.Future()

    def work() -> None:
        if done.set_running_or_notify_cancel():
            try:
                done.set_result(fn())
            except BaseException as exc:  # noqa: BLE001  # handed to the awaiting check, which decides
                done.set_exception(exc)

    threading.Thread(target=work, daemon=True, name="kbot-doctor").start()
    return await asyncio.wrap_future(done)


def first_line(exc: BaseException) -> str:
    return str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
