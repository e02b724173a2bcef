"""Doctor checks of kbot running as a service: the sources it keeps in sync."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from bot.doctor.findings import Finding, Probe
from kbot.db.models import SourceSync

_NEEDS_SQL = "not checked: needs the SQL database at the newest schema"


async def sources(p: Probe) -> str:
    configured = p.settings.sources
    if p.db is None:
        if not configured:
            raise Finding("off", "none configured ([sources] in kbot.toml)")
        raise Finding("off", _NEEDS_SQL)
    async with p.db.session() as s:
        synced = {r.name: r for r in await s.scalars(select(SourceSync))}
    if not configured and not synced:
        raise Finding("off", "none configured ([sources] in kbot.toml)")
    removed = sorted(set(synced) - set(configured))
    gone = sorted(n for n, c in configured.items() if not Path(c.path).exists())
    failed = sorted(n for n, r in synced.items() if r.status == "failed" and n in configured)
    if failed:
        row = synced[failed[0]]
        when = row.finished_at.isoformat(timespec="seconds") if row.finished_at else "?"
        raise Finding(
            "fail",
            f"{len(failed)} of {len(configured)} sources did not sync; {row.name} at {when}: {row.detail}",
            "Fix what the detail names; the previous content is served meanwhile.",
        )
    if removed or gone:
        stale = ", ".join(removed + gone)
        raise Finding(
            "warn",
            f"{stale}: folder gone or removed from the settings; documents still indexed",
            "Purge them: kbot sources sync --prune (or kbot serve --prune).",
        )
    never = [n for n in configured if n not in synced]
    ok = ", ".join(f"{n} ({synced[n].finished_at:%Y-%m-%d %H:%M})" for n in configured if n in synced)
    detail = f"{len(configured)} sources; last synced: {ok or 'none yet'}"
    return detail + (f"; not synced yet: {', '.join(never)} (kbot serve syncs them)" if never else "")
