"""`recsys store restore backup.path=… [store.url=…] [force=true]`: a backup -> the store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from recsys.errors import RecsysError


def main(cfg: DictConfig) -> dict[str, Any]:
    from dataclasses import asdict

    from recsys.stores.backup import redact, restore_store

    if not cfg.store.url:
        raise RecsysError("store.url is empty; name the store to restore into (store.url=…)")
    pg_bin = Path(str(cfg.backup.pg_bin)) if cfg.backup.pg_bin else None
    path = Path(str(cfg.backup.path))
    manifest = restore_store(path, str(cfg.store.url), bool(cfg.force), pg_bin)
    print(
        f"restored {path} (taken {manifest.created_at}) into {redact(str(cfg.store.url))} "
        f"({manifest.summary()})"
    )
    return asdict(manifest)
