"""Which versions of a family retention may delete, and deleting a bundle folder safely.

Kept, always: the production version; the ``keep`` versions that were production most
recently before it (its predecessors: the rollback targets); candidates registered after it
(still waiting for a decision); and every version in use (named by the caller, or reported by
a running server's fresh heartbeat, an experiment variant's bundle included). A family without
a production version keeps its ``keep`` newest versions. Everything else (rejected versions,
candidates that were superseded, older former production versions) may go.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Protocol

STALE_POLLS = 5  # a heartbeat older than this many of its server's poll intervals is stale
STALE_MIN_S = 30.0  # ... and never younger than this (a server busy loading a bundle)


class Versioned(Protocol):
    @property
    def version(self) -> str: ...
    @property
    def stage(self) -> str: ...
    @property
    def created_at(self) -> float: ...
    @property
    def promoted_at(self) -> float | None: ...


def stale_after(poll_s: float) -> float:
    """Seconds after which a heartbeat sent every ``poll_s`` no longer counts."""
    return max(STALE_POLLS * poll_s, STALE_MIN_S)


def kept(
    rows: Sequence[Versioned], production: str | None, keep: int, in_use: Collection[str]
) -> set[str]:
    """The versions of ``rows`` (one family, none deleted) that retention keeps."""
    current = next((r for r in rows if r.version == production), None)
    if current is None:
        newest = sorted(rows, key=lambda r: (r.created_at, r.version), reverse=True)
        return {r.version for r in newest[:keep]} | set(in_use)
    former = sorted(
        (r for r in rows if r.promoted_at is not None and r is not current),
        key=lambda r: r.promoted_at or 0.0,
        reverse=True,
    )
    waiting = {
        r.version
        for r in rows
        if r.stage == "candidate" and (r.created_at, r.version) > (current.created_at, production)
    }
    return {current.version} | {r.version for r in former[:keep]} | waiting | set(in_use)


def remove_folder(path: str | Path) -> None:
    """Delete a bundle folder: renamed first (a hidden name in the same family folder), so a
    crash midway never leaves a half bundle under its version's name."""
    folder = Path(path)
    if not folder.exists():
        return
    trash = folder.with_name(f".deleting-{folder.name}-{uuid.uuid4().hex[:8]}")
    folder.rename(trash)
    shutil.rmtree(trash, ignore_errors=True)
