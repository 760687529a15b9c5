"""`recsys store backup [store.url=…] [backup.path=…]`: the store -> one file + its manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from recsys.errors import RecsysError


def main(cfg: DictConfig) -> dict[str, Any]:
    from dataclasses import asdict

    from recsys.stores.backup import backup_store, redact

    if not cfg.store.url:
        raise RecsysError("store.url is empty; name the store to back up (store.url=…)")
    pg_bin = Path(str(cfg.backup.pg_bin)) if cfg.backup.pg_bin else None
    path = Path(str(cfg.backup.path))
    manifest = backup_store(str(cfg.store.url), path, pg_bin)
    print(f"backed up {redact(str(cfg.store.url))} to {path} ({manifest.summary()})")
    return asdict(manifest)
