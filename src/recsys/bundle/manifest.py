"""Bundle manifest: what a bundle holds and the sha256 of every file."""

from __future__ import annotations

import json
import subprocess
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from recsys.checksums import sha256_file

MANIFEST_SCHEMA = 1
MANIFEST = "manifest.json"


def git_info(cwd: Path | None = None) -> tuple[str, bool]:
    """(short sha, dirty) of the working tree, or ("nogit", False) outside git."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=7", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=cwd,
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                check=True,
                cwd=cwd,
            ).stdout.strip()
        )
        return sha, dirty
    except (OSError, subprocess.CalledProcessError):
        return "nogit", False


def utc_now() -> str:
    """Current UTC time, ISO 8601, seconds."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def new_version(now: datetime | None = None) -> str:
    """``<UTC yyyymmddThhmmss.mmm>-<git sha7>``: milliseconds, so two versions made within
    one second (a fast training followed by an index rebuild) never collide."""
    now = now or datetime.now(UTC)
    return f"{now.strftime('%Y%m%dT%H%M%S')}.{now.microsecond // 1000:03d}-{git_info()[0]}"


@dataclass
class Manifest:
    """Top-level facts about a bundle (docs/training.md)."""

    bundle_name: str
    bundle_version: str
    created_at: str
    git_sha: str
    git_dirty: bool
    versions: dict[str, str]
    data_fingerprint: str
    embedding_dim: int
    score_fn: str
    temperature: float
    vocab_sizes: dict[str, int]
    metrics: dict[str, float]
    index_spec: dict[str, Any] | None = None
    wandb_run_id: str | None = None
    parent_version: str | None = None
    # the latest event time (unix seconds) in the data the bundle was built from; None when
    # that data has no time (the bundle's created_at stands in: docs/training.md#retraining)
    data_cutoff: float | None = None
    # sha256 of the config sections that shape the model (recsys.training.config.config_hash)
    config_hash: str | None = None
    # what the models learned from: the split spec of the carve the settings were chosen on,
    # with "fit": "all" when every part was trained on (a bundle meant to serve; no metrics)
    fit: dict[str, Any] | None = None
    manifest_schema: int = MANIFEST_SCHEMA
    files: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Manifest:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in raw.items() if k in known})

    def checksum_files(self, root: Path) -> None:
        """Record sha256 and size of every file under ``root`` except the manifest."""
        self.files = {
            str(p.relative_to(root)): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
            for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != MANIFEST
        }
