"""Sources kbot keeps in sync by itself: settings, a sync, a failed one, a purge, the doctor."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from bot.doctor import diagnose
from bot.sources import SourceSyncer, first_run
from kbot.errors import ConfigError
from kbot.policies import SourceConfig
from kbot.settings import Settings, load_settings
from knowledge.base import KnowledgeBase
from knowledge.embeddings import Embedder


def test_schedules_are_checked_when_settings_load(tmp_path: Path) -> None:
    ok = SourceConfig(path=tmp_path, collection="hr", every="15m")
    assert ok.interval_s == 900 and SourceConfig(path=tmp_path, collection="hr").interval_s == 3600
    assert SourceConfig(path=tmp_path, collection="hr", cron="0 6 * * 1-5").interval_s is None
    for bad, said in [
        ({"every": "soon"}, "write a number and a unit"),
        ({"every": "0s"}, "write a number and a unit"),
        ({"cron": "every morning"}, "is not a crontab line"),
        ({"every": "1h", "cron": "0 6 * * *"}, "every or cron, not both"),
        ({"collection": "no spaces"}, "use letters, digits"),
    ]:
        with pytest.raises(ConfigError, match=said):
            load_settings(sources={"docs": {"path": str(tmp_path), "collection": "hr", **bad}})
    toml = tmp_path / "kbot.toml"
    toml.write_text(
        '[sources.handbook]\npath = "docs"\ncollection = "hr"\nacl = ["hr-team"]\nevery = "30s"\n'
    )
    settings = load_settings(toml)
    assert settings.sources["handbook"].acl == ["hr-team"] and settings.sources["handbook"].interval_s == 30


async def test_sync_failure_keeps_content_shows_in_doctor_and_prune_purges(
    tmp_path: Path, embedder: Embedder
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "parking.md").write_text("# Parking\n\nThe garage closes at midnight.\n")
    sources = {"facilities": SourceConfig(path=docs, collection="fac", every="1m")}
    settings = Settings(data_dir=tmp_path / "data", sources=sources)
    kb = await KnowledgeBase.open(settings, embedder=embedder)
    try:
        syncer = SourceSyncer(kb, sources)
        first = await syncer.sync("facilities")
        assert first is not None and first.status == "ok" and first.detail.startswith("1 added")
        (docs / "parking.md").write_text("# Parking\n\nThe garage closes at ten in the evening.\n")
        second = await syncer.sync("facilities")
        assert second is not None and second.detail.startswith("0 added, 1 updated")
        assert "ten in the evening" in (await kb.search("garage closes", ["fac"]))[0].text

        (docs / "parking.md").rename(tmp_path / "parked.md")
        docs.rmdir()
        failed = await syncer.sync("facilities")
        assert failed is not None and failed.status == "failed" and "is gone" in failed.detail
        assert failed.last_ok_at and second.last_ok_at  # the last good sync is still known
        assert failed.last_ok_at.replace(tzinfo=None) == second.last_ok_at.replace(tzinfo=None)
        assert "ten in the evening" in (await kb.search("garage closes", ["fac"]))[0].text
        by = {r.check: r for r in await diagnose(settings)}
        assert by["sources"].status == "fail" and "facilities" in by["sources"].detail

        [stale] = await syncer.stale()
        assert stale.why.endswith("is gone")
        assert await syncer.purge(stale) == [f"{docs}/parking.md"]
        assert await kb.search("garage closes", ["fac"]) == []

        dropped = SourceSyncer(kb, {})  # the source left the settings
        [left] = await dropped.stale()
        assert left.why == "removed from the settings"
        await dropped.purge(left)
        assert await dropped.status() == []
    finally:
        await kb.close()


def test_a_cron_source_syncs_at_start_when_new_or_when_kbot_was_down_at_its_time(tmp_path: Path) -> None:
    mornings = SourceConfig(path=tmp_path, collection="hr", cron="0 6 * * *")
    hourly = SourceConfig(path=tmp_path, collection="hr", every="1h")
    now = datetime(2026, 12, 3, 9, 30, tzinfo=UTC)
    assert first_run(mornings, None, now) == now  # never synced: its documents are wanted today
    assert first_run(mornings, datetime(2026, 12, 3, 6, 0, 2, tzinfo=UTC), now) is None  # ran at six
    # Down at six this morning: the run it missed happens now, not tomorrow.
    assert first_run(mornings, datetime(2026, 12, 2, 6, 0, 2), now) == now
    assert first_run(hourly, datetime(2026, 12, 3, 9, 29, tzinfo=UTC), now) == now
