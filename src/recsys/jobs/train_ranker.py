"""`python training/train_ranker.py` / `recsys train-ranker`: retrain only the ranker on an
existing bundle's retriever -> a new bundle version (the source bundle is never edited)."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from recsys.bundle import layout
from recsys.bundle.derive import derive
from recsys.bundle.reader import Bundle, load_bundle
from recsys.errors import BundleError
from recsys.evaluation import EvalSet, evaluate
from recsys.runner import load_or_prepare
from recsys.training.config import TEST, fit_ranking_from
from recsys.training.export import ranking_parts
from recsys.training.summary import training_summary, write_summary


def trained_config(bundle: Bundle, output_dir: str, ranker: DictConfig | None = None) -> DictConfig:
    """The bundle's own resolved config (which data, how to train the label retriever) with
    ``ranker`` (None: the bundle's own), no logger, and checkpoints under ``output_dir``."""
    trained = OmegaConf.load(bundle.path / layout.CONFIG / layout.RESOLVED_CONFIG)
    assert isinstance(trained, DictConfig)
    with open_dict(trained):
        if ranker is not None:
            trained.ranker = ranker
        trained.logger = None
        trained.trainer.default_root_dir = output_dir
        if trained.callbacks.get("checkpoint"):
            trained.callbacks.checkpoint.dirpath = f"{output_dir}/checkpoints"
    return trained


def main(cfg: DictConfig) -> dict[str, Any]:
    """Retrain the ranking stage of ``cfg.bundle`` with ``cfg.ranker``; a new version."""
    bundle = load_bundle(cfg.bundle)
    trained = trained_config(bundle, str(cfg.paths.output_dir), cfg.ranker)
    data = load_or_prepare(trained)
    if data.summary["data_fingerprint"] != bundle.manifest.data_fingerprint:
        raise BundleError(
            f"the prepared data in {trained.data.processed_dir} is not the data "
            f"{bundle.path} was trained on (data fingerprint differs)."
        )
    _, ranker = fit_ranking_from(trained, data, bundle.state, bundle.recommender())
    stale = ("two_stage/", f"{TEST}/two_stage/")
    metrics = {k: v for k, v in bundle.manifest.metrics.items() if not k.startswith(stale)}
    two_stage: dict[str, float] = {}
    ks = list(trained.eval.ks)
    for part, prefix in (("val", "two_stage/"), (TEST, f"{TEST}/two_stage/")):
        held = data.val if part == "val" else data.test
        if held.height:  # a fit=all bundle holds nothing out
            scores = evaluate(ranker.pipeline, EvalSet.from_prepared(data, part), ks=ks)
            two_stage = two_stage or scores
            metrics.update({f"{prefix}{k}": v for k, v in scores.items()})
    summary = training_summary(data, ranker.pipeline)  # the new ranker's scores
    path = derive(
        bundle,
        {**ranking_parts(ranker), layout.SUMMARY: lambda d: write_summary(summary, d)},
        drop=layout.RANKING_PARTS,
        promote=bool(cfg.promote),
        metrics=metrics,
    )
    if two_stage:
        print(f"two-stage recall@20 {two_stage['recall@20']:.4f}", end="; ")
    else:
        print("fit on every interaction (fit=all): nothing held out to report on", end="; ")
    print(f"new bundle version written to {path}")
    return {"bundle": str(path), "metrics": two_stage}
