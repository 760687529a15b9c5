"""`recsys experiments report name=…`: click-through per variant, with 95% intervals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from recsys.errors import RecsysError
from recsys.report import print_table, write_json


def main(cfg: DictConfig) -> dict[str, Any]:
    from recsys.serving.experiments import ctr_report
    from recsys.stores import open_store

    stores = open_store(cfg.store_url, create=False)
    if not stores.persistent:
        raise RecsysError(f"no store at {cfg.store_url}: nothing was served with it yet.")
    counts = stores.experiments.experiment_counts(str(cfg.name))
    stores.close()
    if not counts:
        raise RecsysError(f"no impressions for experiment '{cfg.name}' in {cfg.store_url}.")
    rows = ctr_report(counts, str(cfg.control))
    print_table(rows, title=f"experiment {cfg.name}: click-through per variant (95% intervals)")
    if cfg.out:
        print(
            f"written {write_json(Path(str(cfg.out)), {'experiment': cfg.name, 'variants': rows})}"
        )
    return rows
