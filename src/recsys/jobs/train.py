"""`python training/train.py` / `recsys train`: two-tower retrieval (and the ranker) -> a bundle."""

from __future__ import annotations

from typing import Any

import lightning as L
from omegaconf import DictConfig

from recsys.runner import load_or_prepare, optimized_metric
from recsys.training.config import fits_all, run_training


def main(cfg: DictConfig) -> dict[str, Any]:
    """Retrieval, then (if enabled) the ranker; one bundle with everything.

    Returns:
        ``metrics`` (the bundle's top-line metrics), ``rows`` (every model's validation row),
        ``popularity``, ``bundle`` (its folder) and the retriever's training facts.
    """
    L.seed_everything(cfg.seed, workers=True)
    data = load_or_prepare(cfg)
    run = run_training(cfg, data)
    run.report(data.name)
    return run.as_dict()


def objective(cfg: DictConfig) -> float | None:
    """Train as :func:`main` does; return the metric ``cfg.optimized_metric`` names, for
    Hydra sweepers (Optuna) to tune (None when the config names none, or for a ``fit=all``
    run, which holds nothing out to measure)."""
    metrics = main(cfg)["metrics"]
    if fits_all(cfg):
        return None
    return optimized_metric(metrics, cfg.get("optimized_metric"))
