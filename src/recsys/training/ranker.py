"""Steps of the ranking stage: carve the labels once, build leakage-free lists, fit the ranker.

Leakage-free: part of each training user's history is held out as labels
(:func:`carve_ranker_labels`); a retriever trained *without* those labels (and co-occurrence
and MF fitted without them) generates the candidates from the remaining history
(:func:`build_ranker_examples`). The serving pipeline then puts the ranker behind the sources
fitted on all training data (:class:`ServingStage`). The carve is computed once per run and
handed to both the label retriever and the example builder, so they cannot disagree.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import EarlyStopping
from torch import nn

from recsys.data.prepared import PreparedData
from recsys.data.split import random_holdout
from recsys.data.works import Works
from recsys.evaluation import EvalSet
from recsys.features.pipeline import BookFeatures
from recsys.features.vocab import NUM_RESERVED
from recsys.inference.cooccurrence import CooccurrenceRecommender
from recsys.inference.ease import EaseRecommender
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
from recsys.training.engine import Engine, LocalEngine, TrainerPlan

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabelCarve:
    """The training split with a share of each user's books moved to ``data.val``.

    Attributes:
        data: ``train`` is the history side (what the label retriever and the sources may
            see), ``val`` the labels.
        fraction: share of each user's books held out.
        seed: the seed of the draw.
    """

    data: PreparedData
    fraction: float
    seed: int


def carve_ranker_labels(data: PreparedData, fraction: float, seed: int) -> LabelCarve:
    """Hold out ``fraction`` of each training user's books as ranker labels.

    Args:
        data: the prepared data; only its training split is carved.
        fraction: share of each user's books to hold out.
        seed: the run's seed; the carve draws with ``seed + 1``, a stream apart from the
            run's other draws.
    """
    carve = random_holdout(data.train, fraction=fraction, seed=seed + 1)
    return LabelCarve(replace(data, train=carve.train, val=carve.val), fraction, seed + 1)


def log_popularity(data: PreparedData) -> torch.Tensor:
    """``[num_books]`` log(1 + readers) of each book in ``data``'s training split."""
    counts = np.asarray(data.matrix("train", binary=True).sum(0)).ravel()
    return torch.from_numpy(np.log1p(counts)).float()


@dataclass(frozen=True)
class CandidateSources:
    """How the candidate generator is made: its sizes, co-occurrence, MF and EASE settings.

    Attributes:
        generator: ``CandidateGenerator`` sizes (``n_retrieval``, ``n_ease``, ``n_mf``,
            ``n_cooc``, ``max_candidates``); stored in the bundle as ``ranker/generator.json``.
        cooccurrence: ``CooccurrenceRecommender.from_prepared`` arguments.
        mf: ``MatrixFactorisation.fit`` arguments, or None when the MF source is disabled.
        seed: the MF fit's seed.
        ease: ``EaseRecommender.fit`` arguments (``l2``, ``k``), or None when disabled.
    """

    generator: dict[str, Any]
    cooccurrence: dict[str, Any]
    mf: dict[str, Any] | None
    seed: int
    ease: dict[str, Any] | None = None

    def fit(self, data: PreparedData) -> FittedSources:
        """Co-occurrence and (when enabled) MF and EASE on ``data``'s training split; the
        series source from its catalogue (when any book is in a series)."""
        cooc = CooccurrenceRecommender.from_prepared(data, **self.cooccurrence)
        mf = ease = None
        if self.mf is not None:
            mf = MatrixFactorisation.fit(data.matrix("train"), seed=self.seed, **self.mf)
        if self.ease is not None:
            ease = EaseRecommender.from_prepared(data, **self.ease)
        works = Works.of_vocabulary(data.book_vocab.ids, data.books)
        return FittedSources(cooc, mf, ease, works if works.has_series else None)


@dataclass(frozen=True)
class FittedSources:
    """The non-neural candidate sources, fitted on one training split."""

    cooccurrence: CooccurrenceRecommender
    mf: MatrixFactorisation | None
    ease: EaseRecommender | None = None
    works: Works | None = None  # series: the "next in series" source

    def generator(
        self, retriever: TwoTowerRecommender, spec: CandidateSources
    ) -> CandidateGenerator:
        """The generator over ``retriever`` and these sources, sized by ``spec``."""
        return CandidateGenerator(
            retriever,
            self.cooccurrence,
            **spec.generator,
            mf=self.mf,
            ease=self.ease,
            works=self.works,
        )


@dataclass(frozen=True)
class RankerExamples:
    """Candidate lists with features and labels (see ``build_examples``).

    Attributes:
        tensors: ``features``, ``history``, ``candidates``, ``labels``, ``mask``.
        users: users asked for lists (lists without a positive are dropped).
        seconds: wall time of fitting the label sources and building the lists.
    """

    tensors: dict[str, torch.Tensor]
    users: int
    seconds: float

    @property
    def count(self) -> int:
        """Lists kept (those with a held-out book among the candidates)."""
        return len(self.tensors["labels"])


def build_ranker_examples(
    carve: LabelCarve,
    label_retriever: TwoTowerRecommender,
    books: BookFeatures,
    sources: CandidateSources,
    max_users: int | None,
    seed: int,
) -> RankerExamples:
    """Lists from ``label_retriever`` and sources fitted on ``carve`` (neither saw the labels).

    Args:
        carve: the label carve of this run.
        label_retriever: a retriever trained on ``carve.data`` only.
        books: the book feature table.
        sources: how to fit co-occurrence and MF and size the generator.
        max_users: sample this many users with labels (None or 0: all of them).
        seed: the sample's seed.
    """
    popularity = log_popularity(carve.data)
    started = time.perf_counter()
    generator = sources.fit(carve.data).generator(label_retriever, sources)
    users = np.flatnonzero(np.diff(carve.data.matrix("val").indptr) > 0)
    users = users[users >= NUM_RESERVED]
    if max_users and users.size > max_users:
        users = np.sort(np.random.default_rng(seed).choice(users, max_users, replace=False))
    tensors = build_examples(
        generator, users, carve.data.matrix("train"), carve.data.matrix("val"), books, popularity
    )
    examples = RankerExamples(tensors, int(users.size), time.perf_counter() - started)
    log.info("ranker examples: %d lists with a positive (of %d users)", examples.count, users.size)
    return examples


@dataclass(frozen=True)
class ServingStage:
    """What the ranker will serve behind: the serving retriever and sources fitted on all
    training data. ``pipeline(ranker)`` is the two-stage recommender as the bundle serves it."""

    retriever: TwoTowerRecommender
    sources: FittedSources
    spec: CandidateSources
    books: BookFeatures
    popularity: torch.Tensor

    def pipeline(self, ranker: nn.Module) -> TwoStageRecommender:
        generator = self.sources.generator(self.retriever, self.spec)
        return TwoStageRecommender(generator, ranker, self.books, self.popularity)


@dataclass(frozen=True)
class RankerLoop:
    """How a ranker is trained: module and trainer factories (from config) and settings.

    Attributes:
        make_module: ranker -> its LightningModule (loss, optimiser).
        trainer: the Lightning trainer's plan (its callbacks are added by :func:`fit_ranker`).
        batch_size: lists per batch.
        seed: shuffling seed.
        eval_users: users sampled for the per-epoch two-stage validation.
        patience: epochs without a better two-stage recall@20 before stopping.
        monitor: choose the epoch on validation (``fit=carve``); False trains the trainer's
            epochs and keeps the last (``fit=all``: nothing is held out).
        engine: where the fit runs (this process, or DDP across Ray Train workers).
    """

    make_module: Callable[[nn.Module], RankerModule]
    trainer: TrainerPlan
    batch_size: int
    seed: int
    eval_users: int | None
    patience: int
    monitor: bool = True
    engine: Engine = field(default_factory=LocalEngine)


@dataclass(frozen=True)
class RankerFit:
    """The trained ranker (best epoch's weights) with its serving stage and timings."""

    ranker: nn.Module
    args: dict[str, Any]
    serving: ServingStage
    pipeline: TwoStageRecommender
    examples: int
    best_epoch: int
    examples_seconds: float
    train_seconds: float
    history: list[dict[str, float]] = field(default_factory=list)

    def facts(self) -> dict[str, Any]:
        """What the bundle's ``eval/metrics.json`` records under ``training.ranker``."""
        return {
            "examples": self.examples,
            "examples_seconds": self.examples_seconds,
            "train_seconds": self.train_seconds,
            "best_epoch": self.best_epoch,
            "validation": self.history,  # two-stage metrics after each epoch (fit=carve)
        }


def fit_ranker(
    examples: RankerExamples,
    ranker: nn.Module,
    args: dict[str, Any],
    loop: RankerLoop,
    serving: ServingStage,
    data: PreparedData,
) -> RankerFit:
    """Train ``ranker`` on ``examples``, choosing the epoch on the serving pipeline itself
    (validation users of ``data``), or for the trainer's epochs when ``loop.monitor`` is off.

    Args:
        examples: the leakage-free lists.
        ranker: a fresh ``Ranker``; its feature standardisation is set from ``examples``.
        args: its constructor arguments (stored with it in the bundle).
        loop: module/trainer factories and settings.
        serving: the stage the ranker is evaluated (and served) behind.
        data: the prepared data (its validation users score each epoch).
    """
    ranker.set_standardisation(examples.tensors["features"], examples.tensors["mask"])  # type: ignore[operator]
    module = loop.make_module(ranker)
    callbacks: list[L.Callback] = [BudgetCosineLR()]  # anneal over the budget
    if loop.monitor:
        evaluation = TwoStageEvaluation(
            serving.pipeline, EvalSet.from_prepared(data), ks=(20,), max_users=loop.eval_users
        )
        stop = EarlyStopping(
            monitor="val/two_stage_recall@20",
            mode="max",
            patience=loop.patience,
            check_on_train_epoch_end=True,
        )
        callbacks = [evaluation, stop, *callbacks]
    started = time.perf_counter()
    datamodule = RankerDataModule(examples.tensors, loop.batch_size, loop.seed)
    plan = loop.trainer.with_callbacks(callbacks)
    facts = loop.engine.fit(module, datamodule, plan, keep_ranker, name="ranker")
    best_epoch = int(facts["best_epoch"])
    if loop.monitor:
        log.info(
            "ranker: best epoch %d (two-stage recall@20 %.4f on %s validation users)",
            best_epoch,
            facts["best_score"],
            loop.eval_users,
        )
    else:
        log.info("ranker: %d epochs, the last one kept (nothing held out)", best_epoch + 1)
    return RankerFit(
        ranker=ranker.eval(),
        args=args,
        serving=serving,
        pipeline=serving.pipeline(ranker),
        examples=examples.count,
        best_epoch=best_epoch,
        examples_seconds=examples.seconds,
        train_seconds=time.perf_counter() - started,
        history=list(facts["history"]),
    )


def keep_ranker(trainer: L.Trainer, module: L.LightningModule) -> dict[str, Any]:
    """The ranker's fit facts; the module already holds the weights to keep (the two-stage
    evaluation restores the best epoch's when the fit ends; the last epoch's otherwise)."""
    evaluation = next((c for c in trainer.callbacks if isinstance(c, TwoStageEvaluation)), None)  # type: ignore[attr-defined]
    if evaluation is None:
        return {"best_epoch": trainer.current_epoch - 1, "best_score": None, "history": []}
    return {
        "best_epoch": evaluation.best_epoch,
        "best_score": evaluation.best_score,
        "history": evaluation.history,
    }
