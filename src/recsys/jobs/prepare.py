"""`recsys data prepare`: raw data -> processed Parquet + split + vocabularies + summary."""

from __future__ import annotations

from omegaconf import DictConfig

from recsys.jobs.common import load_or_prepare, summary_rows
from recsys.report import print_table


def main(cfg: DictConfig) -> None:
    data = load_or_prepare(cfg, force=bool(cfg.force))
    print_table(
        summary_rows(data.summary), title=f"prepared {data.name} -> {cfg.data.processed_dir}"
    )
