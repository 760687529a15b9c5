"""Ranker stage: leakage-free training lists, the ranker, and the two-stage recommender.

Leakage-free: part of each training user's history is held out as labels; a retriever
trained *without* those labels (and co-occurrence counted without them) generates the
candidates from the remaining history. The serving pipeline then puts the ranker behind the
retriever and co-occurrence trained on all training data.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import replace
from typing import Any

import hydra
import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import EarlyStopping
from omegaconf import DictConfig, OmegaConf
from torch import nn

from recsys.data.prepared import PreparedData
from recsys.data.split import random_holdout
from recsys.evaluation import EvalSet
from recsys.features.pipeline import BookFeatures, FeatureState, book_feature_table
from recsys.features.ranking import FEATURES
from recsys.features.vocab import NUM_RESERVED
from recsys.inference.cooccurrence import CooccurrenceRecommender
from recsys.inference.mf import MatrixFactorisation
from recsys.inference.two_stage import CandidateGenerator, TwoStageRecommender
from recsys.inference.two_tower import TwoTowerRecommender
from recsys.lightning.callbacks import BudgetCosineLR
from recsys.lightning.ranking import (
    RankerDataModule,
    RankerModule,
    TwoStageEvaluation,
    build_examples,
)

log = logging.getLogger(__name__)


def log_popularity(data: PreparedData) -> torch.Tensor:
    counts = np.asarray(data.matrix("train", binary=True).sum(0)).ravel()
    return torch.from_numpy(np.log1p(counts)).float()


def label_carve(data: PreparedData, fraction: float, seed: int) -> PreparedData:
    """The training split with ``fraction`` of each user's items moved to ``val`` (the labels)."""
    carve = random_holdout(data.train, fraction=fraction, seed=seed)
    return replace(data, train=carve.train, val=carve.val)


def generator_for(
    cfg: DictConfig,
    retriever: TwoTowerRecommender,
    cooc: CooccurrenceRecommender,
    mf: MatrixFactorisation | None,
) -> CandidateGenerator:
    return CandidateGenerator(retriever, cooc, **cfg.ranker.generator, mf=mf)


def fit_mf(cfg: DictConfig, data: PreparedData) -> MatrixFactorisation | None:
    """The matrix-factorisation source on ``data``'s training split (None when disabled)."""
    node = cfg.ranker.get("mf")
    if not node or not node.enabled:
        return None
    params = {k: v for k, v in node.items() if k != "enabled"}
    return MatrixFactorisation.fit(data.matrix("train"), seed=cfg.seed, **params)


def train_ranker(
    cfg: DictConfig,
    data: PreparedData,
    state: FeatureState,
    serving: TwoTowerRecommender,
    label_retriever: TwoTowerRecommender,
) -> dict[str, Any]:
    """Train the ranker on lists from ``label_retriever`` (which never saw the labels).

    Returns the ranker, its constructor args, the serving co-occurrence table and timings.
    """
    rcfg = cfg.ranker
    carved = label_carve(data, rcfg.label_fraction, cfg.seed + 1)
    books: BookFeatures = book_feature_table(data.books, state)
    popularity = log_popularity(carved)
    started = time.perf_counter()
    generator_a = generator_for(
        cfg,
        label_retriever,
        CooccurrenceRecommender.from_prepared(carved, **rcfg.cooccurrence),
        fit_mf(cfg, carved),
    )
    users = np.flatnonzero(np.diff(carved.matrix("val").indptr) > 0)
    users = users[users >= NUM_RESERVED]
    if rcfg.max_users and users.size > rcfg.max_users:
        users = np.sort(
            np.random.default_rng(cfg.seed).choice(users, rcfg.max_users, replace=False)
        )
    examples = build_examples(
        generator_a, users, carved.matrix("train"), carved.matrix("val"), books, popularity
    )
    examples_seconds = time.perf_counter() - started
    log.info(
        "ranker examples: %d lists with a positive (of %d users)",
        len(examples["labels"]),
        users.size,
    )
    model_args = OmegaConf.to_container(rcfg.model, resolve=True)
    assert isinstance(model_args, dict)
    model_args.pop("_target_", None)
    args = {"sizes": state.sizes(), "num_features": len(FEATURES), **model_args}
    ranker: nn.Module = hydra.utils.instantiate(
        rcfg.model, sizes=state.sizes(), num_features=len(FEATURES)
    )
    ranker.set_standardisation(examples["features"], examples["mask"])  # type: ignore[operator]
    module: RankerModule = hydra.utils.instantiate(rcfg.module, ranker=ranker)

    cooc = CooccurrenceRecommender.from_prepared(data, **rcfg.cooccurrence)
    mf = fit_mf(cfg, data)
    full_pop = log_popularity(data)

    def serving_pipeline(model: nn.Module) -> TwoStageRecommender:
        return TwoStageRecommender(generator_for(cfg, serving, cooc, mf), model, books, full_pop)

    evaluation = TwoStageEvaluation(
        serving_pipeline, EvalSet.from_prepared(data), ks=(20,), max_users=rcfg.eval_users
    )
    callbacks = [
        evaluation,
        EarlyStopping(
            monitor="val/two_stage_recall@20",
            mode="max",
            patience=rcfg.patience,
            check_on_train_epoch_end=True,
        ),
        BudgetCosineLR(),  # anneal over max_epochs / max_time, as for the retriever
    ]
    trainer: L.Trainer = hydra.utils.instantiate(rcfg.trainer, callbacks=callbacks)
    started = time.perf_counter()
    trainer.fit(module, datamodule=RankerDataModule(examples, rcfg.batch_size, cfg.seed))
    log.info(
        "ranker: best epoch %d (two-stage recall@20 %.4f on %s validation users)",
        evaluation.best_epoch,
        evaluation.best_score,
        rcfg.eval_users,
    )
    return {
        "ranker": ranker.eval(),
        "args": args,
        "cooccurrence": cooc,
        "mf": mf,
        "pipeline": serving_pipeline(ranker),
        "examples": len(examples["labels"]),
        "best_epoch": evaluation.best_epoch,
        "examples_seconds": examples_seconds,
        "train_seconds": time.perf_counter() - started,
    }


def main(cfg: DictConfig) -> dict[str, Any]:
    """Retrain only the ranker on an existing bundle's retriever -> a new bundle version.

    The bundle's own resolved config says which data it was trained on and how to train the
    label retriever; ``ranker.*`` comes from this command's config.
    """
    from omegaconf import open_dict

    from recsys.bundle.manifest import git_info, new_version, utc_now
    from recsys.bundle.reader import load_bundle
    from recsys.bundle.writer import write_bundle
    from recsys.errors import BundleError
    from recsys.evaluation import evaluate
    from recsys.jobs.common import load_or_prepare
    from recsys.jobs.train import fit, ranking_parts
    from recsys.lightning.callbacks import recommender_from_module

    bundle = load_bundle(cfg.bundle)
    trained = OmegaConf.load(bundle.path / "config" / "resolved.yaml")
    assert isinstance(trained, DictConfig)
    with open_dict(trained):
        trained.ranker = cfg.ranker
        # this run's outputs go under this run's folder, not the original training run's
        trained.logger = None
        trained.trainer.default_root_dir = cfg.paths.output_dir
        if trained.callbacks.get("checkpoint"):
            trained.callbacks.checkpoint.dirpath = f"{cfg.paths.output_dir}/checkpoints"
    data = load_or_prepare(trained)
    if data.summary["data_fingerprint"] != bundle.manifest.data_fingerprint:
        raise BundleError(
            f"the prepared data in {trained.data.processed_dir} is not the data "
            f"{bundle.path} was trained on (data fingerprint differs)."
        )
    state = bundle.state
    carved = label_carve(data, cfg.ranker.label_fraction, trained.seed + 1)
    label_module, _, _ = fit(trained, carved, state, tag="label_retriever")
    ranking = train_ranker(
        trained, data, state, bundle.recommender(), recommender_from_module(label_module.eval())
    )
    two_stage = evaluate(ranking["pipeline"], EvalSet.from_prepared(data), ks=list(trained.eval.ks))
    sha, dirty = git_info()
    metrics = {k: v for k, v in bundle.manifest.metrics.items() if not k.startswith("two_stage/")}
    metrics.update({f"two_stage/{k}": v for k, v in two_stage.items()})
    manifest = replace(
        bundle.manifest,
        bundle_version=new_version(),
        created_at=utc_now(),
        git_sha=sha,
        git_dirty=dirty,
        parent_version=bundle.version,
        files={},
        metrics=metrics,
    )
    parts: dict[str, Any] = {
        child.name: (lambda d, src=child: shutil.copytree(src, d, dirs_exist_ok=True))
        for child in sorted(bundle.path.iterdir())
        if child.is_dir() and child.name not in ("ranker", "cooccurrence", "mf")
    }
    parts.update(ranking_parts(trained, ranking))
    path = write_bundle(bundle.path.parent.parent, manifest, parts, promote=bool(cfg.promote))
    print(f"two-stage recall@20 {two_stage['recall@20']:.4f}; new bundle version written to {path}")
    return {"bundle": str(path), "metrics": two_stage}
