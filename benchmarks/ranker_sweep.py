"""Ranker settings compared on one set of leakage-free lists, on the validation carve.

    python benchmarks/ranker_sweep.py --bundle <fit=carve bundle> [--epochs 4] \
        "ranker.model.dropout=0.3" "ranker.module.optimizer.lr=0.001;ranker.batch_size=512"

The lists are built once, as the bundle's own training built them (its config: label carve,
label retriever, EASE, MF and co-occurrence on the carve), and the bundle's serving sources are
reused; then the bundle's ranker settings (the baseline row) and each setting (one argument;
overrides separated by ``;``) train a ranker for ``--epochs`` epochs, scored after each epoch
by the two-stage pipeline on the validation carve (``ranker.eval_users`` users; every choice is
made there and the test carve is never read). Only settings that leave the lists alone are
accepted (``ranker.model.*``, ``ranker.module.*``, ``ranker.batch_size``).
Prints a table, writes benchmarks/results/ranker_sweep.json.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("WANDB_MODE", "disabled")

import hydra
import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from recsys.bundle.reader import load_bundle
from recsys.features.pipeline import book_feature_table
from recsys.features.ranking import FEATURES
from recsys.jobs.train_ranker import trained_config
from recsys.report import print_table, write_json
from recsys.runner import load_or_prepare
from recsys.training.config import (
    EPOCHS_SEARCH,
    candidate_sources,
    fit_label_retriever,
    ranker_loop,
)
from recsys.training.ranker import (
    FittedSources,
    ServingStage,
    build_ranker_examples,
    fit_ranker,
    log_popularity,
)

SWEEPABLE = ("ranker.model.", "ranker.module.", "ranker.batch_size")


def setting(base: DictConfig, overrides: list[str], epochs: int) -> DictConfig:
    """``base`` with ``overrides`` and a fixed epoch count, each epoch scored on validation
    (also for bundles of the serving recipe, ``epochs=selected``, which monitor nothing),
    early stopping off."""
    for item in overrides:
        if not item.startswith(SWEEPABLE):
            raise SystemExit(f"{item!r} would change the lists; sweep only {', '.join(SWEEPABLE)}")
    cfg = OmegaConf.merge(base, OmegaConf.from_dotlist(overrides))
    assert isinstance(cfg, DictConfig)
    with open_dict(cfg):
        cfg.fit = "carve"
        cfg.epochs = EPOCHS_SEARCH  # score every epoch (epochs=selected would monitor nothing)
        cfg.ranker.trainer.max_epochs = epochs
        cfg.ranker.trainer.max_time = None
        cfg.ranker.patience = epochs  # score every epoch; the best is still restored
    return cfg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bundle", required=True, help="a fit=carve bundle folder")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("settings", nargs="*", help="one setting: overrides joined by ';'")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    bundle = load_bundle(args.bundle)
    # the bundle's own config; the label retriever's checkpoints go to a scratch folder
    base = trained_config(bundle, tempfile.mkdtemp(prefix="ranker-sweep-"))
    L.seed_everything(int(base.seed), workers=True)  # the draws of the bundle's own run
    data = load_or_prepare(base)
    if not data.val.height:
        raise SystemExit(f"{bundle.path} was fit on everything (fit=all); pass a fit=carve one.")
    if data.summary["data_fingerprint"] != bundle.manifest.data_fingerprint:
        raise SystemExit(f"the prepared data is not the data {bundle.path} was trained on.")
    started = time.perf_counter()
    carve, label = fit_label_retriever(base, data, bundle.state)
    books = book_feature_table(data.books, bundle.state)
    sources = candidate_sources(base)
    examples = build_ranker_examples(
        carve, label.recommender(), books, sources, base.ranker.max_users, int(base.seed)
    )
    served = bundle.two_stage(use_index=False).generator
    stage = ServingStage(
        bundle.recommender(use_index=False),
        FittedSources(served.cooccurrence, served.mf, served.ease),
        sources,
        books,
        log_popularity(data),
    )
    lists_seconds = time.perf_counter() - started
    print(f"{examples.count} lists in {lists_seconds:.0f} s")
    results: dict[str, dict[str, Any]] = {}
    table: dict[str, dict[str, Any]] = {}
    for text in ["", *args.settings]:
        overrides = [part for part in text.split(";") if part]
        cfg = setting(base, overrides, args.epochs)
        sizes = {"sizes": bundle.state.sizes(), "num_features": len(FEATURES)}
        torch.manual_seed(int(cfg.seed))
        ranker = hydra.utils.instantiate(cfg.ranker.model, **sizes)
        fit = fit_ranker(examples, ranker, sizes, ranker_loop(cfg), stage, data)
        name = text or "the bundle's settings"
        results[name] = {
            "overrides": overrides,
            "best_epoch": fit.best_epoch,
            "validation": fit.history,
            "train_seconds": fit.train_seconds,
        }
        best = fit.history[fit.best_epoch]
        table[name] = {
            "best_epoch": fit.best_epoch,
            "val recall@20": best["recall@20"],
            "val ndcg@20": best["ndcg@20"],
            "per epoch recall@20": " ".join(f"{e['recall@20']:.4f}" for e in fit.history),
            "per epoch ndcg@20": " ".join(f"{e['ndcg@20']:.4f}" for e in fit.history),
        }
    print_table(table, title=f"ranker settings, {base.ranker.eval_users} validation users")
    out = write_json(
        Path(args.out) / "ranker_sweep.json",
        {"bundle": str(bundle.path), "lists": examples.count, "settings": results},
    )
    print(f"written {out}")


if __name__ == "__main__":
    main()
