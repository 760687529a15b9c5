"""The model registry: every bundle version of a family with its stage, metrics, lineage and
decisions, and the family's production pointer that servers follow.

Stages: ``candidate`` (registered, no decision yet), ``production`` (at most one per family),
``archived`` (was production, or set aside), ``rejected`` (never to be promoted), and
``deleted`` (pruned: the folder is gone, the row and its history stay). Every transition is
one transaction holding the family's lock (:class:`recsys.lifecycle.schema.RegistryDb`), and
the family folder's ``LATEST`` is rewritten inside it, so ``recsys serve bundle=<family>``
starts on production too.
"""

from __future__ import annotations

import json
import time
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

import recsys.lifecycle.records as records
import recsys.lifecycle.retention as retention
from recsys.bundle.files import promote_version, resolve, verify
from recsys.errors import RecsysError
from recsys.lifecycle.records import DELETED, STAGES, ModelVersion
from recsys.lifecycle.schema import RegistryDb, events, families, versions
from recsys.lifecycle.servers import Heartbeats

__all__ = ["DELETED", "STAGES", "ModelVersion", "Registry", "open_registry"]
LINEAGE_KEPT = 100  # production versions remembered for rollback


def open_registry(url: str) -> Registry:
    """The registry at ``url`` (``sqlite:///path/registry.db`` or a PostgreSQL URL), created
    when missing."""
    return Registry(url)


class Registry(Heartbeats):
    """Bundle versions by family, their stages, and the production pointer (module doc)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.db = RegistryDb(url)

    def close(self) -> None:
        self.db.close()

    # --- reading -----------------------------------------------------------------------------

    def get(self, family: str, version: str) -> ModelVersion:
        with self.db.read() as conn:
            found = records.row_of(conn, family, version)
        if found is None:
            raise RecsysError(
                f"no version {version!r} of {family!r} in the registry: `recsys models list "
                f"family={family}` lists them; `recsys models register bundle=<folder>` adds one."
            )
        return found

    def versions(self, family: str, deleted: bool = False) -> list[ModelVersion]:
        """The family's versions, newest first (pruned ones too with ``deleted``)."""
        query = sa.select(versions).where(versions.c.family == family)
        if not deleted:
            query = query.where(versions.c.stage != DELETED)
        query = query.order_by(versions.c.created_at.desc(), versions.c.version.desc())
        with self.db.read() as conn:
            return [ModelVersion.of(r) for r in conn.execute(query)]

    def families(self) -> list[str]:
        query = sa.select(versions.c.family).distinct().order_by(versions.c.family)
        with self.db.read() as conn:
            return [str(f) for f in conn.execute(query).scalars()]

    def find(self, version: str) -> list[ModelVersion]:
        """Every family's row of ``version`` (versions are timestamps: usually one)."""
        with self.db.read() as conn:
            rows = conn.execute(sa.select(versions).where(versions.c.version == version))
            return [ModelVersion.of(r) for r in rows]

    def production(self, family: str) -> ModelVersion | None:
        query = sa.select(versions).where(
            versions.c.family == family, versions.c.stage == "production"
        )
        with self.db.read() as conn:
            row = conn.execute(query).first()
        return ModelVersion.of(row) if row is not None else None

    def history(self, family: str, version: str | None = None) -> list[dict[str, Any]]:
        """Events of the family (or of one version), oldest first: ``at``, ``family``,
        ``version``, ``event``, ``actor``, ``details``."""
        query = sa.select(events).where(events.c.family == family)
        if version is not None:
            query = query.where(events.c.version == version)
        with self.db.read() as conn:
            rows = conn.execute(query.order_by(events.c.id)).all()
        keys = ("at", "family", "version", "event", "actor")
        return [
            {**{k: getattr(r, k) for k in keys}, "details": json.loads(r.details)} for r in rows
        ]

    # --- transitions -------------------------------------------------------------------------

    def register(
        self,
        bundle: str | Path,
        stage: str = "candidate",
        metrics: dict[str, float] | None = None,
        reasons: Sequence[str] = (),
        actor: str = "",
    ) -> ModelVersion:
        """Add a verified bundle: family, version, data fingerprint and parent come from its
        manifest, ``metrics`` are added to the manifest's. Registering a version again
        returns it unchanged (``stage='production'`` still promotes it)."""
        if stage not in STAGES:
            raise RecsysError(f"unknown stage {stage!r}; one of {', '.join(STAGES)}")
        folder = resolve(bundle).resolve()
        manifest, now = verify(folder), time.time()
        family, version = manifest.bundle_name, manifest.bundle_version
        first = "candidate" if stage == "production" else stage  # promoted below
        row = records.new_row(folder, manifest, first, metrics or {}, reasons, actor, now)
        with self.db.locked(family, now) as conn:
            existing = records.row_of(conn, family, version)
            if existing is None:
                conn.execute(versions.insert().values(row))
                details = {"stage": row["stage"], "path": str(folder), "reasons": list(reasons)}
                records.event(conn, family, version, "registered", details, actor, now)
            elif existing.path != str(folder):
                raise RecsysError(
                    f"{family} {version} is registered at {existing.path}, not {folder}: "
                    "register the bundle at its registered path."
                )
        if stage == "production":
            return self.promote(family, version, actor, "; ".join(reasons))
        return self.get(family, version)

    def promote(self, family: str, version: str, actor: str, reason: str = "") -> ModelVersion:
        """Make ``version`` production; the old production becomes archived. Refuses
        rejected and pruned versions and bundles that fail verification."""
        target = self.get(family, version)
        self._check(target, f"{family} {version}")
        return self._make_production(target, actor, reason, None)

    def rollback(self, family: str, actor: str, reason: str = "") -> ModelVersion:
        """Back to the version that was production before the current one (run again: further
        back, as far as the lineage goes)."""
        with self.db.read() as conn:
            current, lineage = records.pointer(conn, family)
        if current is None:
            raise RecsysError(
                f"{family!r} has no production version to roll back; promote one "
                "(`recsys models promote version=…`)."
            )
        if len(lineage) < 2:
            raise RecsysError(
                f"{family}: no earlier production version than {current} to roll back to; "
                "promote another version instead (`recsys models promote version=…`)."
            )
        target = self.get(family, lineage[-2])
        self._check(target, f"the previous production version {target.version}")
        return self._make_production(target, actor, reason, current)

    def reject(self, family: str, version: str, reasons: Sequence[str], actor: str) -> ModelVersion:
        """Mark ``version`` rejected: it is never promoted. Production cannot be rejected
        (roll back or promote another version first)."""
        self.get(family, version)  # unknown: the error naming the fix
        now = time.time()
        with self.db.locked(family, now) as conn:
            found = records.row_of(conn, family, version)
            assert found is not None  # rows are never removed
            if found.stage in ("production", DELETED):
                fix = (
                    "pruned versions keep their stage"
                    if found.stage == DELETED
                    else ("roll back or promote another version first")
                )
                raise RecsysError(f"{family} {version} is {found.stage}: {fix}.")
            reasons = list(reasons)
            records.update(
                conn, family, version, stage="rejected", actor=actor, reasons=json.dumps(reasons)
            )
            records.event(conn, family, version, "rejected", {"reasons": reasons}, actor, now)
        return self.get(family, version)

    def log(
        self, family: str, version: str, event: str, details: dict[str, Any], actor: str
    ) -> None:
        """Record a decision about a version (a gate result, a canary step)."""
        with self.db.write() as conn:
            records.event(conn, family, version, event, details, actor, time.time())

    # --- retention ---------------------------------------------------------------------------

    def prune(
        self, family: str, keep: int = 10, in_use: Collection[str] = (), actor: str = ""
    ) -> list[ModelVersion]:
        """Delete the folders of the versions retention does not keep
        (:mod:`recsys.lifecycle.retention`: never production, its last ``keep`` predecessors,
        candidates waiting for a decision, ``in_use`` or a fresh heartbeat's versions). Their
        rows stay, with stage ``deleted``. Returns what was deleted."""
        now = time.time()
        with self.db.locked(family, now) as conn:
            doomed = _doomed(conn, family, keep, in_use, now)
            for r in doomed:
                records.update(conn, family, r.version, stage=DELETED, actor=actor)
                details = {"path": r.path, "keep": keep, "was": r.stage}
                records.event(conn, family, r.version, "pruned", details, actor, now)
        for r in doomed:
            retention.remove_folder(r.path)
        return [self.get(family, r.version) for r in doomed]

    def prunable(
        self, family: str, keep: int = 10, in_use: Collection[str] = ()
    ) -> list[ModelVersion]:
        """What :meth:`prune` would delete now (a dry run)."""
        with self.db.read() as conn:
            return _doomed(conn, family, keep, in_use, time.time())

    # --- internals ---------------------------------------------------------------------------

    @staticmethod
    def _check(target: ModelVersion, what: str, files: bool = True) -> None:
        """Refuse a version that may not become production: rejected, pruned, or (``files``)
        a bundle that fails verification (a file changed or missing)."""
        if target.stage in ("rejected", DELETED):
            raise RecsysError(
                f"{what} is {target.stage} and cannot become production; "
                "promote another version (`recsys models list` shows them)."
            )
        if files and verify(Path(target.path)).bundle_version != target.version:
            raise RecsysError(f"{target.path} no longer holds version {target.version}.")

    def _make_production(
        self, target: ModelVersion, actor: str, reason: str, rolled_back: str | None
    ) -> ModelVersion:
        """Switch the family's production to ``target`` in one locked transaction (``LATEST``
        with it). ``rolled_back``: the production version a rollback replaces."""
        family, version, now = target.family, target.version, time.time()
        with self.db.locked(family, now) as conn:
            current, lineage = records.pointer(conn, family)
            if current == version:
                return target
            if rolled_back is not None and (current != rolled_back or lineage[-2:-1] != [version]):
                raise RecsysError(
                    f"{family}: production changed meanwhile; run the rollback again."
                )
            now_row = records.row_of(conn, family, version) or target  # its stage may have moved
            self._check(now_row, f"{family} {version}", files=False)  # verified before the lock
            lineage = lineage[:-1] if rolled_back else [*lineage, version][-LINEAGE_KEPT:]
            if current is not None:
                records.update(conn, family, current, stage="archived", actor=actor)
            changes: dict[str, Any] = {"stage": "production", "promoted_at": now, "actor": actor}
            if reason:
                changes["reasons"] = json.dumps([reason])
            records.update(conn, family, version, **changes)
            pointer = {"production": version, "lineage": json.dumps(lineage), "updated_at": now}
            conn.execute(families.update().where(families.c.family == family).values(pointer))
            name = "rolled_back" if rolled_back else "promoted"
            details = {"from": current, "to": version, "reason": reason}
            records.event(conn, family, version, name, details, actor, now)
            _point_latest(Path(target.path), version)
        return self.get(family, version)


def _doomed(
    conn: Connection, family: str, keep: int, in_use: Collection[str], now: float
) -> list[ModelVersion]:
    """The versions of ``family`` retention does not keep (none already deleted)."""
    if keep < 0:
        raise RecsysError(f"keep must be 0 or more, not {keep}")
    rows = [r for r in records.rows_of(conn, family) if r.stage != DELETED]
    production, _ = records.pointer(conn, family)
    busy = set(in_use) | records.in_use(conn, family, now)
    saved = retention.kept(rows, production, keep, busy)
    return sorted(
        (r for r in rows if r.version not in saved),
        key=lambda r: (r.created_at, r.version),
        reverse=True,
    )


def _point_latest(folder: Path, version: str) -> None:
    """The family folder's ``LATEST`` names ``version`` (when the bundle is laid out as
    ``<family>/<version>/``, as every bundle recsys writes is)."""
    if folder.name == version:
        promote_version(folder.parent, version)
