"""The registry's records (:class:`ModelVersion`) and the statements the registry runs inside
its transactions."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

import recsys.lifecycle.retention as retention
from recsys.bundle.manifest import Manifest
from recsys.lifecycle.schema import events, families, servers, versions

STAGES = ("candidate", "production", "archived", "rejected")
DELETED = "deleted"  # pruned: the bundle folder is gone; the row and its history stay


@dataclass(frozen=True)
class ModelVersion:
    """One bundle version in the registry. ``created_at``: when the bundle was built (its
    manifest), epoch seconds; ``promoted_at``: when it last became production; ``actor`` and
    ``reasons``: of its last change of stage."""

    family: str
    version: str
    path: str
    stage: str
    metrics: dict[str, float]
    data_fingerprint: str
    parent: str | None
    created_at: float
    promoted_at: float | None
    actor: str
    reasons: tuple[str, ...]

    @classmethod
    def of(cls, row: Any) -> ModelVersion:
        """From a ``model_versions`` row."""
        return cls(
            row.family,
            row.version,
            row.path,
            row.stage,
            json.loads(row.metrics),
            row.data_fingerprint,
            row.parent,
            row.created_at,
            row.promoted_at,
            row.actor,
            tuple(json.loads(row.reasons)),
        )


def new_row(
    folder: Path,
    manifest: Manifest,
    stage: str,
    metrics: dict[str, float],
    reasons: Sequence[str],
    actor: str,
    now: float,
) -> dict[str, Any]:
    """The ``model_versions`` row of a verified bundle (``metrics`` added to its manifest's)."""
    return {
        "family": manifest.bundle_name,
        "version": manifest.bundle_version,
        "path": str(folder),
        "stage": stage,
        "metrics": json.dumps({**manifest.metrics, **metrics}),
        "data_fingerprint": manifest.data_fingerprint,
        "parent": manifest.parent_version,
        "created_at": epoch(manifest.created_at, now),
        "actor": actor,
        "reasons": json.dumps(list(reasons)),
    }


def row_of(conn: Connection, family: str, version: str) -> ModelVersion | None:
    query = sa.select(versions).where(versions.c.family == family, versions.c.version == version)
    row = conn.execute(query).first()
    return ModelVersion.of(row) if row is not None else None


def rows_of(conn: Connection, family: str) -> list[ModelVersion]:
    query = sa.select(versions).where(versions.c.family == family)
    return [ModelVersion.of(r) for r in conn.execute(query)]


def pointer(conn: Connection, family: str) -> tuple[str | None, list[str]]:
    """The family's production version and lineage (production versions, oldest first)."""
    query = sa.select(families.c.production, families.c.lineage)
    row = conn.execute(query.where(families.c.family == family)).first()
    if row is None:
        return None, []
    return row.production, list(json.loads(row.lineage))


def update(conn: Connection, family: str, version: str, **values: Any) -> None:
    where = (versions.c.family == family) & (versions.c.version == version)
    conn.execute(versions.update().where(where).values(**values))


def event(
    conn: Connection,
    family: str,
    version: str | None,
    name: str,
    details: dict[str, Any],
    actor: str,
    at: float,
) -> None:
    conn.execute(
        events.insert().values(
            at=at,
            family=family,
            version=version,
            event=name,
            actor=actor,
            details=json.dumps(details, default=str),
        )
    )


def in_use(conn: Connection, family: str, now: float) -> set[str]:
    """Versions of ``family`` that running servers reported in a fresh heartbeat."""
    found: set[str] = set()
    for row in conn.execute(sa.select(servers)):
        if now - row.last_seen <= retention.stale_after(row.poll_s):
            found.update(v for f, v in json.loads(row.serving) if f == family)
    return found


def epoch(iso: str, default: float | None = None) -> float:
    """An ISO 8601 time (a manifest's ``created_at``) as epoch seconds; ``default`` (now)
    when it does not parse."""
    try:
        return datetime.fromisoformat(iso).timestamp()
    except (TypeError, ValueError):
        return time.time() if default is None else default
