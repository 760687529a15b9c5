"""`recsys experiments report name=…`: click-through per variant, with 95% intervals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from recsys.errors import RecsysError
from recsys.report import print_table, write_json


def report(counts: dict[str, tuple[int, int]], control: str = "control") -> dict[str, Any]:
    """Rows per variant: impressions, clicked impressions, CTR with a Wilson 95% interval,
    and the difference to ``control`` with a normal-approximation 95% interval."""
    from recsys.serving.experiments import wilson

    rows: dict[str, dict[str, Any]] = {}
    base = counts.get(control)
    for variant, (shown, clicked) in sorted(counts.items()):
        ctr = clicked / shown if shown else 0.0
        low, high = wilson(clicked, shown)
        row: dict[str, Any] = {
            "impressions": shown,
            "clicked": clicked,
            "ctr": round(ctr, 5),
            "ctr_95_low": round(low, 5),
            "ctr_95_high": round(high, 5),
        }
        if base is not None and variant != control and shown and base[0]:
            p0 = base[1] / base[0]
            se = (ctr * (1 - ctr) / shown + p0 * (1 - p0) / base[0]) ** 0.5
            row["diff_vs_control"] = round(ctr - p0, 5)
            row["diff_95_low"] = round(ctr - p0 - 1.96 * se, 5)
            row["diff_95_high"] = round(ctr - p0 + 1.96 * se, 5)
        rows[variant] = row
    return rows


def main(cfg: DictConfig) -> dict[str, Any]:
    from recsys.stores import open_store

    stores = open_store(cfg.store_url, create=False)
    if not stores.persistent:
        raise RecsysError(f"no store at {cfg.store_url}: nothing was served with it yet.")
    counts = stores.experiments.experiment_counts(str(cfg.name))
    stores.close()
    if not counts:
        raise RecsysError(f"no impressions for experiment '{cfg.name}' in {cfg.store_url}.")
    rows = report(counts, str(cfg.control))
    print_table(rows, title=f"experiment {cfg.name}: click-through per variant (95% intervals)")
    if cfg.out:
        print(
            f"written {write_json(Path(str(cfg.out)), {'experiment': cfg.name, 'variants': rows})}"
        )
    return rows
