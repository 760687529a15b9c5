"""`recsys evaluate`: fit a configured model on the training split, full-catalogue metrics on
the validation carve and (when the split has one) the test carve."""

from __future__ import annotations

import time
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from recsys.evaluation import carves, evaluate
from recsys.report import print_table, write_json
from recsys.runner import load_or_prepare

HEADLINE = (
    "recall@20",
    "ndcg@20",
    "hit_rate@20",
    "mrr@20",
    "coverage@20",
    "novelty@20",
    "diversity@20",
    "fit_seconds",
    "eval_seconds",
)


def main(cfg: DictConfig) -> dict[str, Any]:
    data = load_or_prepare(cfg)
    started = time.perf_counter()
    model = hydra.utils.instantiate(cfg.model)(data)
    fit_seconds = time.perf_counter() - started
    results = {}
    for carve, eval_set in carves(data).items():
        results[carve] = evaluate(
            model,
            eval_set,
            ks=list(cfg.ks),
            batch_size=cfg.batch_size,
            max_users=cfg.max_users,
        )
        results[carve]["fit_seconds"] = fit_seconds
    name = type(model).__name__
    print_table(
        {f"{name} ({carve})": metrics for carve, metrics in results.items()},
        HEADLINE,
        title=f"{data.name}: full catalogue, validation carve and test carve (reported only)",
    )
    payload = {
        "model": name,
        "data": data.summary,
        "config": OmegaConf.to_container(cfg.model, resolve=True),
        "metrics": results["val"],
        "test_metrics": results.get("test"),
    }
    path = write_json(cfg.out, payload)
    print(f"metrics written to {path}")
    return payload
