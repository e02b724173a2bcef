"""The dashboard's figures, computed by the same SQL on SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

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
    generated: str | None = None,
    grounding: dict[str, Any] | None = None,
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
        generated=generated,
        grounding=grounding,
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
    assert data.totals == {
        "answers": 8,
        "up": 3,
        "down": 1,
        "rate": 0.75,
        "gaps": 3,
        # No model draft was logged (answers from before the grounding check): nothing to share.
        "generated": 0,
        "fallback": 0,
        "fallback_share": None,
    }
    assert data.grounding == [] and data.grounding_by_adapter == []


def verdict(fallback: str | None, *, mode: str = "strict", passed: bool | None = None) -> dict[str, Any]:
    ok = fallback is None if passed is None else passed
    return {"mode": mode, "passed": ok, "reasons": [] if ok else ["unsupported claim"], "fallback": fallback}


def drafted(day: int, fallback: str | None, **kw: Any) -> Answer:
    """An answer a model wrote a draft for, and the grounding check's verdict on it."""
    status = "not_found" if fallback == "not_found" else "ok"
    return answer(day, status=status, generated="draft [1].", grounding=verdict(fallback), **kw)


async def test_share_of_answers_that_needed_the_fallback(database: Database) -> None:
    rows = [
        # 2026-11-19, base: 2 of 4 model answers fell back (a quote, "the documents do not say").
        drafted(1, None),
        drafted(1, "extractive"),
        drafted(1, "not_found"),
        # The check off: reported, not enforced: the model's text was shown, no fallback.
        answer(1, generated="draft.", grounding=verdict(None, mode="off", passed=False)),
        # 2026-11-19, dpo-1: 1 of 3.
        drafted(1, None, adapter="dpo-1"),
        drafted(1, None, adapter="dpo-1", platform="web"),
        drafted(1, "extractive", adapter="dpo-1"),
        # 2026-11-20, base: 1 of 2.
        drafted(0, None, platform="teams"),
        drafted(0, "not_found"),
        # 2026-11-20, dpo-1: 1 of 4.
        drafted(0, "extractive", adapter="dpo-1"),
        *(drafted(0, None, adapter="dpo-1") for _ in range(3)),
    ]
    ignored = [
        answer(0, status="not_found", grounding=None),  # nothing found: no model called
        answer(0, status="error", adapter="dpo-1"),  # the model failed: no draft, no verdict
        drafted(0, "extractive", platform="eval"),  # the learning loop's own evaluation
        drafted(0, "extractive", platform="eval", adapter="dpo-1"),
        drafted(45, "not_found"),  # outside the window
    ]
    async with database.session() as s:
        s.add_all([*rows, *ignored])
    data = await gather(database, days=30, now=NOW)

    def row(answers: int, fallback: int, extractive: int, not_found: int, share: float) -> dict[str, Any]:
        return {
            "answers": answers,
            "fallback": fallback,
            "extractive": extractive,
            "not_found": not_found,
            "share": share,
        }

    assert data.grounding == [
        {"day": "2026-11-19", "adapter": "base", **row(4, 2, 1, 1, 0.5)},
        {"day": "2026-11-19", "adapter": "dpo-1", **row(3, 1, 1, 0, 0.3333)},
        {"day": "2026-11-20", "adapter": "base", **row(2, 1, 0, 1, 0.5)},
        {"day": "2026-11-20", "adapter": "dpo-1", **row(4, 1, 1, 0, 0.25)},
    ]
    assert data.grounding_by_adapter == [
        {"adapter": "base", **row(6, 3, 1, 2, 0.5)},
        {"adapter": "dpo-1", **row(7, 2, 2, 0, 0.2857)},
    ]
    assert (data.totals["generated"], data.totals["fallback"], data.totals["fallback_share"]) == (
        13,
        5,
        0.3846,
    )
    assert data.totals["answers"] == 15  # every answer still counts as an answer
    assert data.to_dict()["grounding_by_adapter"] == data.grounding_by_adapter
