"""`recsys data prepare`: raw data -> processed Parquet + split + vocabularies + summary."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from recsys.report import print_table
from recsys.runner import load_or_prepare, prepare_streamed


def main(cfg: DictConfig) -> None:
    if cfg.data.get("buckets"):  # streamed: prepared again every time, never loaded whole
        summary = prepare_streamed(cfg)
        where = f"{cfg.data.processed_dir} ({cfg.data.buckets} buckets)"
        print_table(summary_rows(summary), title=f"prepared {summary['name']} -> {where}")
        return
    data = load_or_prepare(cfg, force=bool(cfg.force))
    print_table(
        summary_rows(data.summary), title=f"prepared {data.name} -> {cfg.data.processed_dir}"
    )


def summary_rows(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Summary of a prepared dataset as table rows."""
    return {
        summary["name"]: {
            "users": summary["users"],
            "books": summary["books"],
            "interactions": summary["interactions"],
            "density": summary["density"],
            "duplicates merged": summary["duplicates_merged"],
            "train rows": summary["train"]["interactions"],
            "val rows": summary["val"]["interactions"],
            "val users": summary["val"]["users"],
            "val OOV books": summary["val"]["oov_books"],
            "test rows": summary.get("test", {}).get("interactions", 0),
            "test users": summary.get("test", {}).get("users", 0),
        }
    }
