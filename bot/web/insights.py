"""What the dashboard shows, read from the answer log, the vote log and the training runs.

Aggregation happens in SQL where both SQLite and PostgreSQL can do it (``date()`` of a UTC
timestamp, counts); citations and grounding verdicts are JSON and are counted here, over the
window's answers (only the columns needed).
Evaluation answers (platform ``eval``) are the learning loop talking to itself: never counted.
The fallback share counts only answers where a model was called (``generated`` is set): of those,
the ones the grounding check replaced by a cited quote (``extractive``) or by "the documents do
not say" (``not_found``).
Feedback from anonymous web visitors is counted like any other, and also on its own
(``anonymous``): the export leaves it out of training unless ``KBOT_TRAIN_ON_ANONYMOUS``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import and_, case, func, select

from finetune.export import ANONYMOUS_PREFIX
from kbot.db import Database
from kbot.db.models import Adapter, Answer, Correction, SourceSync, TrainingRun, Vote

EVAL_PLATFORM = "eval"


@dataclass
class Insights:
    days: int
    since: str
    answers_per_day: list[dict[str, Any]] = field(default_factory=list)  # {day, platform, answers}
    satisfaction: list[dict[str, Any]] = field(default_factory=list)  # {day, adapter, up, down, rate}
    by_adapter: list[dict[str, Any]] = field(default_factory=list)  # {adapter, up, down, rate, answers}
    gaps: list[dict[str, Any]] = field(default_factory=list)  # {question, asked, last, status}
    top_documents: list[dict[str, Any]] = field(default_factory=list)  # {source, title, citations}
    runs: list[dict[str, Any]] = field(default_factory=list)
    # {name, path, collection, status, started_at, finished_at, last_ok_at, detail}: [sources]
    sources: list[dict[str, Any]] = field(default_factory=list)
    loss_curves: list[dict[str, Any]] = field(default_factory=list)  # {adapter, active, losses}
    # {day, adapter, answers, fallback, extractive, not_found, share}: answers = model-written ones
    grounding: list[dict[str, Any]] = field(default_factory=list)
    grounding_by_adapter: list[dict[str, Any]] = field(default_factory=list)  # the same, without day
    totals: dict[str, Any] = field(default_factory=dict)
    # {votes, corrections, anonymous_votes, anonymous_corrections, share}: share of all feedback
    anonymous: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _rate(up: int, down: int) -> float | None:
    return round(up / (up + down), 4) if up + down else None


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _fallbacks(rows: Iterable[tuple[Any, str, dict[str, Any] | None]]) -> list[dict[str, Any]]:
    """Per (day, adapter): how many model-written answers the grounding check replaced, and by what.

    A draft without a verdict (``grounding`` None: no check ran) was shown as is: no fallback.
    """
    counts: dict[tuple[str, str], Counter[str]] = {}
    for d, a, grounding in rows:
        c = counts.setdefault((str(d), a), Counter())
        c["answers"] += 1
        fallback = grounding.get("fallback") if isinstance(grounding, dict) else None
        if fallback is not None:
            c["fallback"] += 1
            c[str(fallback)] += 1
    return [_fallback_row(c, day=d, adapter=a) for (d, a), c in sorted(counts.items())]


def _fallback_row(c: Counter[str], **key: str) -> dict[str, Any]:
    n, fell = c["answers"], c["fallback"]
    return {
        **key,
        "answers": n,
        "fallback": fell,
        "extractive": c["extractive"],
        "not_found": c["not_found"],
        "share": _share(fell, n),
    }


def _by_adapter(per_day: list[dict[str, Any]]) -> list[dict[str, Any]]:
    totals: dict[str, Counter[str]] = {}
    for row in per_day:
        c = totals.setdefault(row["adapter"], Counter())
        for name in ("answers", "fallback", "extractive", "not_found"):
            c[name] += row[name]
    return [_fallback_row(c, adapter=a) for a, c in sorted(totals.items())]


async def gather(db: Database, *, days: int = 30, now: datetime | None = None) -> Insights:
    since = (now or datetime.now(UTC)) - timedelta(days=days)
    out = Insights(days=days, since=since.isoformat(timespec="seconds"))
    day = func.date(Answer.created_at)
    recent = (Answer.created_at >= since, Answer.platform != EVAL_PLATFORM)
    up = func.sum(case((Vote.value > 0, 1), else_=0))
    down = func.sum(case((Vote.value < 0, 1), else_=0))
    adapter = func.coalesce(Answer.adapter_version, "base")
    async with db.session() as s:
        per_day = select(day, Answer.platform, func.count()).where(*recent).group_by(day, Answer.platform)
        rows = await s.execute(per_day.order_by(day))
        out.answers_per_day = [{"day": str(d), "platform": p, "answers": n} for d, p, n in rows]

        # Votes count on the day of the answer they judge, under the adapter that wrote it.
        rows = await s.execute(
            select(day, adapter, up, down)
            .join(Vote, Vote.answer_id == Answer.id)
            .where(*recent)
            .group_by(day, adapter)
            .order_by(day)
        )
        out.satisfaction = [
            {"day": str(d), "adapter": a, "up": int(u), "down": int(n), "rate": _rate(int(u), int(n))}
            for d, a, u, n in rows
        ]
        voted = (
            select(adapter.label("adapter"), up.label("up"), down.label("down"))
            .join(Vote, Vote.answer_id == Answer.id)
            .where(*recent)
            .group_by(adapter)
        )
        answered = dict(
            (await s.execute(select(adapter, func.count()).where(*recent).group_by(adapter))).all()
        )
        votes_by = {a: (int(u), int(n)) for a, u, n in await s.execute(voted)}
        out.by_adapter = [
            {
                "adapter": a,
                "answers": answered.get(a, 0),
                "up": votes_by.get(a, (0, 0))[0],
                "down": votes_by.get(a, (0, 0))[1],
                "rate": _rate(*votes_by.get(a, (0, 0))),
            }
            for a in sorted(set(answered) | set(votes_by))
        ]

        rows = await s.execute(
            select(Answer.question, Answer.status, func.count(), func.max(Answer.created_at))
            .where(*recent, Answer.status.in_(("not_found", "error")))
            .group_by(Answer.question, Answer.status)
            .order_by(func.count().desc(), func.max(Answer.created_at).desc())
            .limit(25)
        )
        out.gaps = [{"question": q, "status": st, "asked": n, "last": _iso(last)} for q, st, n, last in rows]

        cited: Counter[tuple[str, str]] = Counter()
        for (citations,) in await s.execute(select(Answer.citations).where(*recent, Answer.status == "ok")):
            for c in citations or []:
                cited[(str(c.get("source", "")), str(c.get("title", "")))] += 1
        out.top_documents = [
            {"source": src, "title": title, "citations": n} for (src, title), n in cited.most_common(15)
        ]

        # Only answers a model wrote: nothing found or an error leaves nothing to check.
        drafted = select(day, adapter, Answer.grounding).where(*recent, Answer.generated.is_not(None))
        out.grounding = _fallbacks((d, a, g) for d, a, g in await s.execute(drafted))
        out.grounding_by_adapter = _by_adapter(out.grounding)

        runs = await s.scalars(select(TrainingRun).order_by(TrainingRun.started_at.desc()).limit(20))
        out.runs = [_run(r) for r in runs]
        syncs = await s.scalars(select(SourceSync).order_by(SourceSync.name))
        out.sources = [
            {
                "name": r.name,
                "path": r.path,
                "collection": r.collection,
                "status": r.status,
                "started_at": _iso(r.started_at),
                "finished_at": _iso(r.finished_at),
                "last_ok_at": _iso(r.last_ok_at),
                "detail": r.detail,
            }
            for r in syncs
        ]

        adapters = (await s.scalars(select(Adapter).order_by(Adapter.created_at.desc()).limit(8))).all()
        out.loss_curves = [
            {"adapter": a.version, "active": a.active, "losses": _losses(a)} for a in reversed(adapters)
        ]

        total_answers = await s.scalar(select(func.count()).select_from(Answer).where(*recent))
        total = (await s.execute(select(up, down).select_from(Vote).join(Answer).where(*recent))).one()
        feedback: dict[str, int] = {}
        for name, table, person in (
            ("votes", Vote, Vote.voter),
            ("corrections", Correction, Correction.author),
        ):
            # What finetune.export.is_anonymous says, in SQL.
            visitor = and_(table.platform == "web", person.startswith(ANONYMOUS_PREFIX, autoescape=True))
            counted = select(func.count(), func.sum(case((visitor, 1), else_=0)))
            row = (await s.execute(counted.select_from(table).join(Answer).where(*recent))).one()
            feedback[name], feedback[f"anonymous_{name}"] = int(row[0] or 0), int(row[1] or 0)
    out.totals = {
        "answers": int(total_answers or 0),
        "up": int(total[0] or 0),
        "down": int(total[1] or 0),
        "rate": _rate(int(total[0] or 0), int(total[1] or 0)),
        "gaps": sum(g["asked"] for g in out.gaps),
        "generated": sum(g["answers"] for g in out.grounding),
        "fallback": sum(g["fallback"] for g in out.grounding),
    }
    out.totals["fallback_share"] = _share(out.totals["fallback"], out.totals["generated"])
    given = feedback["votes"] + feedback["corrections"]
    anonymous = feedback["anonymous_votes"] + feedback["anonymous_corrections"]
    out.anonymous = {**feedback, "share": round(anonymous / given, 4) if given else None}
    return out


def _iso(value: datetime | str | None) -> str | None:
    return value.isoformat(timespec="seconds") if isinstance(value, datetime) else value


def _run(run: TrainingRun) -> dict[str, Any]:
    return {
        "id": run.id,
        "started_at": _iso(run.started_at),
        "status": run.status,
        "candidate": run.candidate,
        "decision": run.decision,
        "error": run.error,
        "seconds": run.seconds,
        "counts": run.counts,
        "metrics": run.metrics,
        "plan": (run.inputs or {}).get("plan", []),
        "why": (run.inputs or {}).get("why", ""),
    }


def _losses(adapter: Adapter) -> list[float]:
    """The loss per logged step: from the registry, else from the adapter's training log on disk."""
    losses = adapter.training.get("losses")
    if isinstance(losses, list):
        return [float(x) for x in losses]
    log_file = Path(adapter.path) / "training_log.json"
    try:
        history = json.loads(log_file.read_text(encoding="utf-8")).get("log", [])
    except (OSError, ValueError):
        return []  # an adapter from elsewhere, or files moved: no curve, the rest still shows
    return [float(h["loss"]) for h in history if isinstance(h, dict) and "loss" in h]
