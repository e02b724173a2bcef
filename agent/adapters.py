"""The adapter registry: LoRA versions in the SQL store, their files under ``KBOT_DATA_DIR/adapters``.

At most one version is active. The answer path reads the active one for every answer, so
activating a version takes effect on the next answer in every process, without a restart.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select, update

from agent.backends import AdapterRef
from kbot.db import Database
from kbot.db.models import Adapter, utcnow
from kbot.errors import AdapterError


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


def _info(row: Adapter) -> AdapterInfo:
    return AdapterInfo(row.version, row.base_model, Path(row.path), row.active, row.training, row.scores)


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

    async def list(self) -> list[AdapterInfo]:
        async with self._db.session() as s:
            return [_info(r) for r in await s.scalars(select(Adapter).order_by(Adapter.created_at))]

    async def activate(self, version: str | None) -> None:
        """Make ``version`` the only active adapter (``None``: answer with the base model), atomically."""
        async with self._db.session() as s:
            if version is not None:
                row = await s.get(Adapter, version)
                if row is None:
                    raise AdapterError(f"No adapter version {version} is registered.")
            await s.execute(update(Adapter).where(Adapter.active.is_(True)).values(active=False))
            if version is not None:
                await s.execute(
                    update(Adapter)
                    .where(Adapter.version == version)
                    .values(active=True, activated_at=utcnow())
                )

    async def previous(self) -> AdapterInfo | None:
        """The adapter active before the current one (by activation time), for rollback."""
        async with self._db.session() as s:
            row = await s.scalar(
                select(Adapter)
                .where(Adapter.active.is_(False), Adapter.activated_at.is_not(None))
                .order_by(Adapter.activated_at.desc())
                .limit(1)
            )
            return _info(row) if row else None
