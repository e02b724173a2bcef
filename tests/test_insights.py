"""The dashboard's figures, computed by the same SQL on SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bot.web.insights import gather
from kbot.db import Database
from kbot.db.models import Adapter, Answer, TrainingRun, Vote

NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)
_ids = itertools.count(1)


def answer(
    day: int,
    *,
    platform: str = "slack",
    status: str = "ok",
    adapter: str | None = None,
    question: str = "q",
    cited: str = "hr/leave.md",
) -> Answer:
    return Answer(
        id=f"a{next(_ids):05d}",
        created_at=NOW - timedelta(days=day, hours=1),
        platform=platform,
        asker="U1",
        collections=["hr"],
        question=question,
        search_query=question,
        messages=[],
        retrieved=[],
        answer="x",
        citations=[{"n": 1, "source": cited, "title": cited.upper(), "quote": "", "chunk_id": "c"}]
        if status == "ok"
        else [],
        status=status,
        base_model="m",
        adapter_version=adapter,
        latency_ms=1,
    )


async def test_figures(database: Database, tmp_path: Path) -> None:
    a_old = [answer(2), answer(2, platform="teams"), answer(1, adapter="dpo-1")]
    a_new = [answer(0, adapter="dpo-1", platform="web", cited="hr/pay.md"), answer(0, adapter="dpo-1")]
    gaps = [
        answer(0, status="not_found", question="moon base?"),
        answer(1, status="not_found", question="moon base?"),
        answer(0, status="error", question="parking?"),
    ]
    ignored = [answer(0, platform="eval"), answer(45)]  # evaluation answers; outside the window
    log_dir = tmp_path / "dpo-0"
    log_dir.mkdir()
    (log_dir / "training_log.json").write_text(json.dumps({"log": [{"loss": 0.7}, {"loss": 0.5}, {"x": 1}]}))
    async with database.session() as s:
        s.add_all([*a_old, *a_new, *gaps, *ignored])
        await s.flush()
        s.add_all(
            [
                Vote(answer_id=a_old[0].id, platform="slack", voter="U1", value=1, origin="reaction"),
                Vote(answer_id=a_old[0].id, platform="slack", voter="U2", value=-1, origin="reaction"),
                Vote(answer_id=a_old[2].id, platform="slack", voter="U1", value=1, origin="button"),
                Vote(answer_id=a_new[0].id, platform="web", voter="anon-1", value=1, origin="web"),
                Vote(answer_id=ignored[0].id, platform="eval", voter="x", value=-1, origin="web"),
                Adapter(version="dpo-0", base_model="m", path=str(log_dir), training={}),
                Adapter(
                    version="dpo-1",
                    base_model="m",
                    path="/gone",
                    active=True,
                    training={"losses": [0.6, 0.4]},
                ),
                TrainingRun(
                    status="promoted",
                    candidate="dpo-1",
                    decision="dpo-1 beat base",
                    counts={"pairs": 9},
                    metrics={
                        "candidate": {"preference_accuracy": 0.8},
                        "against": {"preference_accuracy": 0.5},
                    },
                ),
            ]
        )
    data = await gather(database, days=30, now=NOW)

    per_day = {(r["day"], r["platform"]): r["answers"] for r in data.answers_per_day}
    assert per_day == {
        ("2026-11-18", "slack"): 1,
        ("2026-11-18", "teams"): 1,
        ("2026-11-19", "slack"): 2,  # one answer and one not-found question
        ("2026-11-20", "slack"): 3,
        ("2026-11-20", "web"): 1,
    }
    satisfaction = {(r["day"], r["adapter"]): (r["up"], r["down"], r["rate"]) for r in data.satisfaction}
    assert satisfaction == {
        ("2026-11-18", "base"): (1, 1, 0.5),
        ("2026-11-19", "dpo-1"): (1, 0, 1.0),
        ("2026-11-20", "dpo-1"): (1, 0, 1.0),
    }
    by_adapter = {r["adapter"]: (r["answers"], r["up"], r["down"]) for r in data.by_adapter}
    assert by_adapter == {"base": (5, 1, 1), "dpo-1": (3, 2, 0)}
    assert [(g["question"], g["status"], g["asked"]) for g in data.gaps] == [
        ("moon base?", "not_found", 2),
        ("parking?", "error", 1),
    ]
    assert [(d["source"], d["citations"]) for d in data.top_documents] == [
        ("hr/leave.md", 4),
        ("hr/pay.md", 1),
    ]
    assert [(r["status"], r["candidate"]) for r in data.runs] == [("promoted", "dpo-1")]
    curves = {c["adapter"]: c["losses"] for c in data.loss_curves}
    assert curves == {"dpo-0": [0.7, 0.5], "dpo-1": [0.6, 0.4]}
    assert data.totals == {"answers": 8, "up": 3, "down": 1, "rate": 0.75, "gaps": 3}
