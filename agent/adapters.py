"""The adapter registry: LoRA versions in the SQL store, their files under ``KBOT_DATA_DIR/adapters``.

At most one version is active (a partial unique index guarantees it). The answer path reads the
active one for every answer, so a promotion takes effect on the next answer in every process,
without a restart.

Every change of the active adapter is a row in ``adapter_promotions``, written by
:func:`promote_in`. Replayed in order, the rows form a stack: a promotion pushes its version, a
rollback pops down to its target. :meth:`AdapterRegistry.rollback` walks back down that stack, so
after promoting v1, v2, v3 and v4, rollbacks return to v3, v2, v1 and then the base model (the
stack's bottom, named ``base``); one more is refused, as there is nothing left to go back to.

The evaluation gate's verdict on a candidate is kept in its ``scores["gate"]``:
``{"passed": bool, "against": VERSION or "base", "reasons": [str], "at": ISO 8601, "by": str}``.
:meth:`AdapterRegistry.promote` accepts only a passing verdict against the version active at the
time of promotion, unless forced.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from agent.backends import AdapterRef
from kbot.db import Database
from kbot.db.models import Adapter, AdapterPromotion, utcnow
from kbot.errors import AdapterError

BASE = "base"  # how commands, evaluations and the gate name the base model (no adapter)
# Any constant works; it only has to be the same for every kbot process sharing a PostgreSQL database.
_PROMOTION_LOCK_ID = 0x6B626F75


@dataclass(frozen=True)
class AdapterInfo:
    version: str
    base_model: str
    path: Path
    active: bool
    training: dict[str, object]
    scores: dict[str, object]

    @property
    def ref(self) -> AdapterRef:
        return AdapterRef(self.version, self.path)


@dataclass(frozen=True)
class Promotion:
    """One row of the promotion history; ``version`` / ``previous`` None is the base model."""

    id: int
    at: datetime
    kind: str  # promote | rollback
    version: str | None
    previous: str | None
    by: str
    forced: bool
    evaluation: dict[str, Any]


def _info(row: Adapter) -> AdapterInfo:
    return AdapterInfo(row.version, row.base_model, Path(row.path), row.active, row.training, row.scores)


def _promotion(row: AdapterPromotion) -> Promotion:
    return Promotion(
        row.id, row.at, row.kind, row.version, row.previous, row.by, row.forced, dict(row.evaluation)
    )


def _name(version: str | None) -> str:
    return version or "the base model"


async def _lock(session: AsyncSession) -> None:
    """Serialise promotions on PostgreSQL until the transaction ends.

    Without it, two concurrent changes read the active row from snapshots taken before the other
    committed: a rollback to the base model would leave the other's promotion active while
    recording the base model. SQLite needs nothing: it has one writer at a time, and a
    transaction whose snapshot went stale is refused when it starts writing.
    """
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _PROMOTION_LOCK_ID})


async def _active_in(session: AsyncSession) -> str | None:
    version: str | None = await session.scalar(select(Adapter.version).where(Adapter.active.is_(True)))
    return version


async def promote_in(
    session: AsyncSession,
    version: str | None,
    *,
    by: str,
    forced: bool = False,
    evaluation: dict[str, Any] | None = None,
    kind: Literal["promote", "rollback"] = "promote",
) -> str | None:
    """Make ``version`` the active adapter (None: the base model) and record it in the history.

    Runs in the caller's transaction (the nightly job promotes in the same transaction that
    records its run) and neither commits nor checks the gate: callers decide. ``evaluation`` is
    the verdict the decision rested on, ``forced`` says it was taken without a passing one.
    Returns the version that was active before (None: the base model).
    """
    await _lock(session)
    if version is not None and await session.get(Adapter, version) is None:
        raise AdapterError(f"No adapter version {version} is registered.")
    previous = await _active_in(session)
    if version == previous:
        raise AdapterError(f"{version or 'The base model'} is already active; nothing changed.")
    # Deactivate first: the unique index allows one active row at any moment, even mid-transaction.
    await session.execute(update(Adapter).where(Adapter.active.is_(True)).values(active=False))
    if version is not None:
        await session.execute(
            update(Adapter).where(Adapter.version == version).values(active=True, activated_at=utcnow())
        )
    session.add(
        AdapterPromotion(
            at=utcnow(),
            kind=kind,
            version=version,
            previous=previous,
            by=by,
            forced=forced,
            evaluation=evaluation or {},
        )
    )
    await session.flush()
    return previous


def gate_refusal(version: str, gate: object, active: str | None) -> str | None:
    """Why ``version`` may not replace ``active`` without ``--force``, given its recorded ``gate``
    verdict (``scores["gate"]``); None when the verdict allows it."""
    against = active or BASE
    now = f"the active adapter {active}" if active else "the base model, which answers now"
    how = (
        f"Evaluate it with: kbot eval {version} --golden FILE, "
        f"or promote it anyway with: kbot adapters promote {version} --force"
    )
    if not isinstance(gate, dict) or not gate:
        return f"{version} has no recorded evaluation. {how}"
    if gate.get("against") != against:
        return f"{version} was evaluated against {gate.get('against')}, not against {now}. {how}"
    if gate.get("passed") is not True:
        reasons = "; ".join(str(r) for r in gate.get("reasons") or []) or "no reason recorded"
        return f"{version} did not pass its evaluation against {against} ({reasons}). {how}"
    return None


def _stack(rows: list[AdapterPromotion], active: str | None) -> list[str | None]:
    """The promotion stack, bottom first, its top the active version; the base model lies below it.

    A rollback whose target is missing from the stack (history from before it was kept) starts
    the stack afresh at that target. An active version the history does not end with (changed by
    code that bypassed it) is pushed, so a rollback returns to what the history last had.
    """
    stack: list[str | None] = []
    for row in rows:
        if row.kind == "rollback":
            while stack and stack[-1] != row.version:
                stack.pop()
            if not stack and row.version is not None:
                stack = [row.version]
        else:
            stack.append(row.version)
    if (stack[-1] if stack else None) != active:
        stack.append(active)
    return stack


class AdapterRegistry:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def register(
        self,
        version: str,
        *,
        base_model: str,
        path: Path,
        training: dict[str, object] | None = None,
        scores: dict[str, object] | None = None,
    ) -> AdapterInfo:
        if not (path / "adapter_config.json").is_file():
            raise AdapterError(f"{path} holds no LoRA adapter (adapter_config.json is missing).")
        if version == BASE:
            raise AdapterError(f"{BASE!r} names the base model; give the adapter another version name.")
        async with self._db.session() as s:
            if await s.get(Adapter, version) is not None:
                raise AdapterError(f"Adapter version {version} is already registered.")
            row = Adapter(
                version=version,
                base_model=base_model,
                path=str(path.resolve()),
                active=False,
                training=training or {},
                scores=scores or {},
            )
            s.add(row)
        return _info(row)

    async def active(self) -> AdapterInfo | None:
        async with self._db.session() as s:
            row = await s.scalar(select(Adapter).where(Adapter.active.is_(True)))
            return _info(row) if row else None

    async def history(self) -> list[Promotion]:
        """Every change of the active adapter, oldest first."""
        async with self._db.session() as s:
            rows = await s.scalars(select(AdapterPromotion).order_by(AdapterPromotion.id))
            return [_promotion(r) for r in rows]

    async def record_evaluation(
        self, version: str, *, against: str, passed: bool, reasons: list[str], by: str
    ) -> dict[str, Any]:
        """Keep the gate's verdict in ``scores["gate"]`` (other scores stay); returns the verdict."""
        verdict: dict[str, Any] = {
            "passed": passed,
            "against": against,
            "reasons": list(reasons),
            "at": utcnow().isoformat(),
            "by": by,
        }
        async with self._db.session() as s:
            row = await s.scalar(select(Adapter).where(Adapter.version == version).with_for_update())
            if row is None:
                raise AdapterError(f"No adapter version {version} is registered.")
            # A new dict, so the JSON column sees a change to write.
            row.scores = {**row.scores, "gate": verdict}
        return verdict

    async def promote(
        self,
        version: str,
        *,
        by: str,
        forced: bool = False,
        evaluation: dict[str, Any] | None = None,
    ) -> str | None:
        """Make ``version`` active if its evaluation passed against the active version (or ``forced``).

        ``evaluation`` is the verdict to rely on, by default the one ``kbot eval`` recorded in its
        ``scores["gate"]``. The check and the change happen in one transaction, so a promotion in
        between makes this one's evaluation stale and it is refused. Returns the previous version.
        """
        async with self._db.session() as s:
            await _lock(s)
            row = await s.get(Adapter, version)
            if row is None:
                raise AdapterError(f"No adapter version {version} is registered.")
            verdict = evaluation if evaluation is not None else row.scores.get("gate")
            if not forced and (reason := gate_refusal(version, verdict, await _active_in(s))):
                raise AdapterError(f"{reason}.")
            recorded = verdict if isinstance(verdict, dict) else {}
            return await promote_in(s, version, by=by, forced=forced, evaluation=recorded)

    async def rollback(self, *, to: str | None = None, by: str) -> str | None:
        """Return to the version promoted before the active one, or to ``to`` (``"base"``: the base
        model) if it lies below the active one in the history. Returns the version now active.

        With the base model active and nothing below it, there is nothing to go back to: refused
        rather than done silently, so a script or an operator notices.
        """
        async with self._db.session() as s:
            await _lock(s)
            rows = list(await s.scalars(select(AdapterPromotion).order_by(AdapterPromotion.id)))
            active = await _active_in(s)
            below = _stack(rows, active)[:-1]
            reachable = [v for v in reversed(below) if v is not None] + ([BASE] if active else [])
            if to is None:
                target = below[-1] if below else None
                if target is None and active is None:
                    raise AdapterError(
                        "The base model already answers and no earlier promotion is left to go back to."
                    )
            elif to == active:
                raise AdapterError(f"{to} is already active; nothing changed.")
            elif to == BASE:
                if active is None:
                    raise AdapterError("The base model already answers; nothing changed.")
                target = None
            elif to in below:
                target = to
            else:
                options = (
                    f"You can go back to: {', '.join(dict.fromkeys(reachable))}."
                    if reachable
                    else "Nothing lies below it in the history."
                )
                raise AdapterError(
                    f"{to} was not promoted before {_name(active)}, so rollback cannot return to it. "
                    f"{options} To make {to} active anyway, promote it: kbot adapters promote {to}"
                )
            await promote_in(s, target, by=by, kind="rollback")
            return target

    async def activate(self, version: str | None) -> None:
        """Make ``version`` the active adapter (None: the base model), bypassing the gate.

        Kept for code that sets the active adapter directly (tests, fixtures); recorded in the
        history as a forced promotion by ``activate()``. Activating the active version is a no-op.
        Operators and jobs use :meth:`promote` (gated) or :func:`promote_in` instead.
        """
        async with self._db.session() as s:
            await _lock(s)
            if version is not None and await s.get(Adapter, version) is None:
                raise AdapterError(f"No adapter version {version} is registered.")
            if await _active_in(s) != version:
                await promote_in(s, version, by="activate()", forced=True)

    # Last: in the class body after it, ``list`` would name this method, not the type.
    async def list(self) -> list[AdapterInfo]:
        async with self._db.session() as s:
            return [_info(r) for r in await s.scalars(select(Adapter).order_by(Adapter.created_at))]
