"""`make demo`: the product end to end on the offline synthetic default."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from recsys.evaluation import EvalSet, evaluate
from recsys.inference.popularity import PopularityRecommender
from recsys.jobs.common import load_or_prepare, summary_rows
from recsys.report import print_table, write_json

COLUMNS = ("recall@20", "ndcg@20", "hit_rate@20", "coverage@20", "novelty@20", "diversity@20")


def main(cfg: DictConfig) -> dict[str, Any]:
    data = load_or_prepare(cfg)
    print_table(summary_rows(data.summary), title="data")
    eval_set = EvalSet.from_prepared(data)
    results = {
        "popularity": evaluate(PopularityRecommender.from_prepared(data), eval_set, ks=list(cfg.ks))
    }
    print_table(results, COLUMNS, title="full-catalogue validation metrics")
    path = write_json(cfg.out, {"data": data.summary, "metrics": results})
    print(f"results written to {path}")
    return results
