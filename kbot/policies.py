"""Nested settings: what kbot may do in a channel, and the document sources it keeps in sync."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_DURATION = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class ChannelPolicy(BaseModel):
    """What kbot may do in one chat channel (see :attr:`Settings.channels`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    collections: list[str] = Field(
        default_factory=list, description="Collections searched for questions asked here; empty = all."
    )
    mention_only: bool = Field(
        default=True,
        description="Answer only when mentioned (and in threads kbot answered in); false answers "
        "every message posted in the channel.",
    )
    enabled: bool = Field(default=True, description="False: kbot stays silent here.")
    groups: list[str] = Field(
        default_factory=list,
        description="ACL groups whose documents may be shown here. In a shared place (a channel, a "
        "group chat) everyone there reads the answers, so an asker's groups count only if listed here; "
        "empty = only documents open to everyone. Direct messages always use the asker's own groups.",
    )


class SourceConfig(BaseModel):
    """A folder (or file) ``kbot serve`` re-ingests on a schedule (see :attr:`Settings.sources`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Path = Field(description="Folder or file, as `kbot ingest` takes it (relative: to kbot's cwd).")
    collection: str = Field(description="Collection it is ingested into.")
    acl: list[str] = Field(default_factory=list, description="Groups allowed to see it; empty: everyone.")
    every: str | None = Field(
        default=None, description='How often to sync: "30s", "15m", "1h", "1d". Default 1h (unless cron).'
    )
    cron: str | None = Field(
        default=None, description='When to sync, a crontab line in server time: "0 6 * * 1-5".'
    )
    follow_symlinks: bool = Field(default=False, description="As `kbot ingest --follow-symlinks`.")

    @model_validator(mode="after")
    def _check(self) -> SourceConfig:
        if not NAME.match(self.collection):
            raise ValueError(f"collection {self.collection!r}: use letters, digits, '_', '-' or '.'")
        if self.every is not None and self.cron is not None:
            raise ValueError("give every or cron, not both")
        if self.every is not None:
            seconds(self.every)
        if self.cron is not None:
            from apscheduler.triggers.cron import CronTrigger

            try:
                CronTrigger.from_crontab(self.cron)
            except ValueError as exc:
                raise ValueError(f"cron {self.cron!r} is not a crontab line (0 6 * * 1-5): {exc}") from None
        return self

    @property
    def interval_s(self) -> int | None:
        """Seconds between syncs; None when a cron spec decides."""
        if self.cron is not None:
            return None
        return seconds(self.every or "1h")


def seconds(duration: str) -> int:
    match = _DURATION.match(duration)
    if match is None or int(match.group(1)) == 0:
        raise ValueError(f"every {duration!r}: write a number and a unit, like 30s, 15m, 1h or 1d")
    return int(match.group(1)) * _UNIT_S[match.group(2)]


def check_source_names(value: dict[str, Any]) -> dict[str, Any]:
    for key in value:
        if not NAME.match(key):
            raise ValueError(f"source name {key!r}: use letters, digits, '_', '-' or '.'")
    return value
