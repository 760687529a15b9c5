"""Steps of the retrieval stage: fit the feature pipeline, then the two towers."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import WandbLogger

from recsys.data.prepared import PreparedData
from recsys.features.pipeline import FeaturePipeline, FeatureState
from recsys.inference.two_tower import TwoTowerRecommender
from recsys.lightning.callbacks import recommender_from_module
from recsys.lightning.retrieval import RetrievalDataModule, TwoTowerModule
from recsys.training.engine import Engine, TrainerPlan

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetrieverFit:
    """A trained two-tower module (best checkpoint's weights) and facts about its training.

    Attributes:
        module: the module, attached to its training data's feature tables.
        tower_args: constructor arguments of each tower (``user_tower``, ``book_tower``), so
            the bundle can rebuild them without the training code.
        train_seconds: wall time of initialisation (the spectral SVD) plus fitting.
        epochs: epochs run.
        best_epoch: the epoch (0-based) whose weights were kept: the best checkpoint's, else
            the last one run.
        steps: optimiser steps run.
        examples_per_second: training throughput.
        wandb_run_id: the wandb run that logged this fit, if any.
        workers: processes the fit ran on (DDP across Ray Train workers when more than 1).
    """

    module: TwoTowerModule
    tower_args: dict[str, dict[str, Any]]
    train_seconds: float
    epochs: int
    steps: int
    examples_per_second: float
    wandb_run_id: str | None = None
    best_epoch: int | None = None
    workers: int = 1

    def facts(self) -> dict[str, Any]:
        """What the bundle's ``eval/metrics.json`` records under ``training``."""
        return {
            "train_seconds": self.train_seconds,
            "epochs": self.epochs,
            "steps": self.steps,
            "examples_per_second": self.examples_per_second,
            "wandb_run_id": self.wandb_run_id,
            "best_epoch": self.best_epoch,
            "workers": self.workers,
        }

    def recommender(self) -> TwoTowerRecommender:
        """The exact-scoring recommender of the trained towers (puts the module in eval)."""
        return recommender_from_module(self.module.eval())

    def book_embeddings(self) -> np.ndarray:
        """``[num_books, dim]`` book vectors (rows 0 and 1 are the reserved ids)."""
        return np.asarray(self.module.book_embeddings().numpy())


def fit_features(pipeline: FeaturePipeline, data: PreparedData) -> FeatureState:
    """Fit the feature pipeline on the training split (the only place it is fitted)."""
    return pipeline.fit(data.train, data.books, data.users, data.user_vocab, data.book_vocab)


def fit_retriever(
    module: TwoTowerModule,
    datamodule: RetrievalDataModule,
    engine: Engine,
    plan: TrainerPlan,
    tower_args: dict[str, dict[str, Any]],
    initialise: bool = True,
    name: str = "retriever",
) -> RetrieverFit:
    """Initialise (unless ``initialise`` is off: weights given) and train ``module`` on
    ``datamodule`` where ``engine`` runs fits; keep the best checkpoint's weights.

    Args:
        module: towers + task, already attached to ``datamodule``'s feature tables.
        datamodule: the training split's (user, book) pairs.
        engine: this process, or DDP across Ray Train workers.
        plan: the configured Lightning trainer (callbacks, loggers, budget).
        tower_args: the towers' constructor arguments (recorded, see :class:`RetrieverFit`).
        name: the fit's name in the run (``retriever``, ``label_retriever``).
    """
    started = time.perf_counter()
    if initialise:
        module.initialise(datamodule)  # part of training time (the spectral SVD: ~2 s)
    facts = engine.fit(module, datamodule, plan, keep_best_checkpoint, name)
    seconds = time.perf_counter() - started
    steps = int(facts["steps"])
    return RetrieverFit(
        module=module,
        tower_args=tower_args,
        train_seconds=seconds,
        epochs=int(facts["epochs"]),
        steps=steps,
        examples_per_second=steps * datamodule.batch_size / max(seconds, 1e-9),
        wandb_run_id=facts.get("wandb_run_id"),
        best_epoch=facts.get("best_epoch"),
        workers=int(facts.get("workers", 1)),
    )


def keep_best_checkpoint(trainer: L.Trainer, module: L.LightningModule) -> dict[str, Any]:
    """Load the best checkpoint's weights into ``module`` (the last epoch's stay when none
    was written); the fit's facts."""
    best = getattr(trainer.checkpoint_callback, "best_model_path", "")
    best_epoch = trainer.current_epoch - 1
    if best:
        log.info("restoring best checkpoint %s", best)
        checkpoint = torch.load(best, weights_only=False)
        module.load_state_dict(checkpoint["state_dict"])
        best_epoch = int(checkpoint["epoch"])
    return {
        "epochs": trainer.current_epoch,
        "steps": trainer.global_step,
        "best_epoch": best_epoch,
        "wandb_run_id": next(
            (lg.experiment.id for lg in trainer.loggers if isinstance(lg, WandbLogger)), None
        ),
    }
