"""Config -> the objects and settings the training steps take.

The one module under :mod:`recsys.training` that reads a ``DictConfig`` (CONTRIBUTING.md stops it
at the jobs): Hydra instantiates ``_target_`` nodes from the node itself, with data-derived
arguments added at that moment (tower sizes from the fitted ``FeatureState``, a trainer's
callbacks), so the mapping needs the node. Both the ``train`` and ``train-ranker`` jobs fit
retrievers and rankers this way, and a job never imports another job, so the mapping lives
here once instead of in each job. The steps themselves take typed arguments only.
"""

from __future__ import annotations

import hashlib
import json
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf
from torch import nn

from recsys.data.prepared import PreparedData
from recsys.data.split import FIT_ALL, fit_mode
from recsys.errors import RecsysError
from recsys.evaluation import EvalSet, evaluate
from recsys.features.pipeline import FeatureState, book_feature_table
from recsys.features.ranking import FEATURES
from recsys.inference.popularity import PopularityRecommender
from recsys.inference.two_tower import TwoTowerRecommender
from recsys.lightning.retrieval import RetrievalDataModule, TwoTowerModule
from recsys.report import print_table
from recsys.training.engine import Engine, LocalEngine, RayEngine, TrainerPlan
from recsys.training.export import BundleContents, write_bundle
from recsys.training.index import index_retriever
from recsys.training.ranker import (
    CandidateSources,
    LabelCarve,
    RankerFit,
    RankerLoop,
    ServingStage,
    build_ranker_examples,
    carve_ranker_labels,
    fit_ranker,
    log_popularity,
)
from recsys.training.retriever import RetrieverFit, fit_features, fit_retriever

# the config sections that shape a trained model (paths, loggers and bundle names do not)
MODEL_SECTIONS = (
    "data",
    "split",
    "features",
    "model",
    "index",
    "ranker",
    "trainer",
    "callbacks",
    "seed",
    "batch_size",
    "eval",
    "fit",
    "selected",
)


def config_hash(cfg: DictConfig) -> str:
    """sha256 of the sections of ``cfg`` that shape the model, unresolved: interpolations
    such as ``${paths.output_dir}`` count as written, so moving the outputs changes nothing."""
    sections = {
        name: OmegaConf.to_container(cfg[name], resolve=False)
        if isinstance(cfg.get(name), DictConfig)
        else cfg.get(name)
        for name in MODEL_SECTIONS
    }
    return hashlib.sha256(json.dumps(sections, sort_keys=True, default=str).encode()).hexdigest()


def _plain(node: DictConfig) -> dict[str, Any]:
    """A node's constructor arguments: :func:`_plain_node` without ``_target_``."""
    return {k: v for k, v in _plain_node(node).items() if k != "_target_"}


def build_module(cfg: DictConfig, state: FeatureState) -> tuple[TwoTowerModule, dict[str, Any]]:
    """Instantiate towers with data-derived sizes, then the LightningModule around them.

    Returns:
        The module and each tower's constructor arguments.
    """
    sizes = state.sizes()
    user_tower = hydra.utils.instantiate(cfg.model.user_tower, sizes=sizes)
    book_tower = hydra.utils.instantiate(cfg.model.book_tower, sizes=sizes)
    module = hydra.utils.instantiate(cfg.model, user_tower=user_tower, book_tower=book_tower)
    args = {
        "user_tower": {"sizes": sizes, **_plain(cfg.model.user_tower)},
        "book_tower": {"sizes": sizes, **_plain(cfg.model.book_tower)},
    }
    return module, args


def _loggers(cfg: DictConfig) -> list[Logger]:
    if not cfg.get("logger"):
        return []
    return [hydra.utils.instantiate(node) for node in cfg.logger.values() if node is not None]


def fits_all(cfg: DictConfig) -> bool:
    """``fit=all``: every interaction, the epochs chosen beforehand, nothing monitored."""
    return fit_mode(cfg.get("fit")) == FIT_ALL


EPOCHS_SEARCH, EPOCHS_SELECTED = "search", "selected"


def trains_selected_epochs(cfg: DictConfig) -> bool:
    """True when every stage trains its ``selected.*`` epochs and keeps the last, monitoring
    nothing: always with ``fit=all``; with ``fit=carve`` when ``epochs=selected`` (the serving
    recipe, measured on the carve). ``epochs=search`` (the default) early-stops on validation.
    """
    how = str(cfg.get("epochs") or EPOCHS_SEARCH)
    if how not in (EPOCHS_SEARCH, EPOCHS_SELECTED):
        raise RecsysError(f"epochs must be {EPOCHS_SEARCH} or {EPOCHS_SELECTED}, got {how!r}.")
    return fits_all(cfg) or how == EPOCHS_SELECTED


def selected_epochs(cfg: DictConfig, stage: str) -> int:
    """The epochs a ``fit=all`` run trains ``stage`` (``retriever``, ``label_retriever`` or
    ``ranker``) for: ``selected.<stage>_epochs``, chosen on the validation carve by a
    ``fit=carve`` run (its facts' ``best_epoch`` plus one), else the stage trainer's
    ``max_epochs``; the label retriever defaults to the retriever's."""
    selected = cfg.get("selected") or {}
    chosen = selected.get(f"{stage}_epochs")
    if chosen is None and stage == "label_retriever":
        chosen = selected.get("retriever_epochs")
    trainer = cfg.ranker.trainer if stage == "ranker" else cfg.trainer
    epochs = int(chosen if chosen is not None else trainer.max_epochs)
    if epochs < 1:
        raise RecsysError(f"selected.{stage}_epochs must be >= 1, got {epochs}.")
    return epochs


def _callbacks(cfg: DictConfig, eval_set: EvalSet, tag: str, monitor: bool) -> list[L.Callback]:
    """The configured callbacks; without ``monitor`` (nothing held out) those that watch
    validation (the evaluation, and any with a ``monitor`` metric) are left out."""
    out = []
    for name, node in (cfg.get("callbacks") or {}).items():
        if node is None:
            continue
        if not monitor and (name == "evaluation" or node.get("monitor")):
            continue
        extra = {"dirpath": f"{node.dirpath}/{tag}"} if node.get("dirpath") else {}
        obj = hydra.utils.instantiate(node, **extra)
        out.append(obj(eval_set=eval_set) if name == "evaluation" else obj)
    return out


def fit_retriever_from(
    cfg: DictConfig,
    data: PreparedData,
    state: FeatureState,
    tag: str = "retriever",
    start: TwoTowerModule | None = None,
) -> RetrieverFit:
    """Train the configured towers on ``data``'s training split.

    ``tag`` separates the checkpoints of several fits in one run; only the ``retriever`` fit
    is logged (auxiliary fits are not). With ``fit=all`` (or ``epochs=selected``) it trains
    the selected epochs (:func:`selected_epochs`) and monitors nothing. ``start``: continue
    from that module's weights (same towers) instead of the configured initialisation.
    """
    datamodule = RetrievalDataModule(data, state, batch_size=cfg.batch_size, seed=cfg.seed)
    module, tower_args = build_module(cfg, state)
    if start is not None:
        module.load_state_dict(start.state_dict())
    module.attach(datamodule)
    monitor = not trains_selected_epochs(cfg)
    eval_set = EvalSet.from_prepared(data)
    loggers = _loggers(cfg) if tag == "retriever" else []
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))  # type: ignore[arg-type]
    # selected epochs: all of them, whatever they take (a time budget would cut them silently)
    stage = "label_retriever" if tag == "label_retriever" else "retriever"
    fixed = (
        {}
        if monitor
        else {  # and no checkpoint: the last epoch is the one kept, and it is in memory
            "max_epochs": selected_epochs(cfg, stage),
            "max_time": None,
            "enable_checkpointing": False,
        }
    )
    plan = TrainerPlan(
        node=_plain_node(cfg.trainer),
        callbacks=_callbacks(cfg, eval_set, tag, monitor),
        loggers=loggers,
        overrides=fixed,
    )
    engine = training_engine(cfg)
    return fit_retriever(module, datamodule, engine, plan, tower_args, start is None, tag)


ENGINES = ("local", "ray")


# the engine of the run in progress (run_training): every fit of one run shares it
_RUN_ENGINE: ContextVar[Engine | None] = ContextVar("run_engine", default=None)


def training_engine(cfg: DictConfig) -> Engine:
    """``engine``: ``local`` (this process) or ``ray`` (DDP across ``trainer.workers`` Ray
    Train workers; ``ray.address``, ``ray.storage``, ``ray.cpus_per_worker``,
    ``ray.max_failures``, ``ray.keep_checkpoints``). Inside :func:`run_training`, the run's."""
    current = _RUN_ENGINE.get()
    if current is not None:
        return current
    name = str(cfg.get("engine") or "local")
    if name not in ENGINES:
        raise RecsysError(f"unknown engine {name!r}: use engine=local or engine=ray.")
    workers = int((cfg.get("trainer") or {}).get("workers") or 1)
    if name == "local":
        if workers != 1:
            raise RecsysError(
                f"trainer.workers={workers} needs engine=ray (DDP across Ray Train workers)."
            )
        return LocalEngine()
    ray_cfg = cfg.get("ray") or {}
    address = ray_cfg.get("address") or None
    storage = ray_cfg.get("storage") or ("" if address else str(Path(cfg.paths.output_dir) / "ray"))
    return RayEngine(
        workers=workers,
        storage=storage,
        address=address,
        cpus_per_worker=float(ray_cfg.get("cpus_per_worker") or 1),
        max_failures=int(ray_cfg.get("max_failures") or 0),
        keep_checkpoints=bool(ray_cfg.get("keep_checkpoints")),
    )


def _plain_node(node: DictConfig) -> dict[str, Any]:
    """A config node resolved to plain data, ``_target_`` kept (what a worker instantiates)."""
    plain = OmegaConf.to_container(node, resolve=True)
    assert isinstance(plain, dict)
    return {str(k): v for k, v in plain.items()}


def candidate_sources(cfg: DictConfig) -> CandidateSources:
    """``ranker.generator``, ``ranker.cooccurrence``, ``ranker.mf`` and ``ranker.ease`` as
    typed settings."""
    rcfg = cfg.ranker

    def enabled(name: str) -> dict[str, Any] | None:
        node = rcfg.get(name)
        if not node or not node.enabled:
            return None
        return {k: v for k, v in _plain(node).items() if k != "enabled"}

    return CandidateSources(
        generator=_plain(rcfg.generator),
        cooccurrence=_plain(rcfg.cooccurrence),
        mf=enabled("mf"),
        seed=int(cfg.seed),
        ease=enabled("ease"),
    )


def ranker_loop(cfg: DictConfig) -> RankerLoop:
    """``ranker.module``, ``ranker.trainer`` and the loop settings."""
    rcfg = cfg.ranker
    monitor = not trains_selected_epochs(cfg)
    fixed = {} if monitor else {"max_epochs": selected_epochs(cfg, "ranker"), "max_time": None}
    return RankerLoop(
        make_module=lambda ranker: hydra.utils.instantiate(rcfg.module, ranker=ranker),
        trainer=TrainerPlan(node=_plain_node(rcfg.trainer), overrides=fixed),
        batch_size=int(rcfg.batch_size),
        seed=int(cfg.seed),
        eval_users=rcfg.eval_users,
        patience=int(rcfg.patience),
        monitor=monitor,
        engine=training_engine(cfg),
    )


def continues_label_retriever(cfg: DictConfig) -> bool:
    """``ranker.serving_retriever``: ``continue`` trains the serving two-tower onwards from the
    label retriever's weights (``selected.retriever_epochs`` more epochs), ``scratch`` from
    the configured initialisation."""
    how = str(cfg.ranker.get("serving_retriever") or "scratch")
    if how not in ("scratch", "continue"):
        raise RecsysError(f"ranker.serving_retriever must be scratch or continue, got {how!r}.")
    return bool(cfg.ranker.enabled) and how == "continue"


def fit_label_retriever(
    cfg: DictConfig, data: PreparedData, state: FeatureState
) -> tuple[LabelCarve, RetrieverFit]:
    """Carve the ranker's labels once (``ranker.label_fraction``) and train the label
    retriever on the rest of the training split."""
    carve = carve_ranker_labels(data, float(cfg.ranker.label_fraction), int(cfg.seed))
    return carve, fit_retriever_from(cfg, carve.data, state, tag="label_retriever")


def fit_ranking_from(
    cfg: DictConfig,
    data: PreparedData,
    state: FeatureState,
    serving: TwoTowerRecommender,
    label: tuple[LabelCarve, RetrieverFit] | None = None,
) -> tuple[RetrieverFit, RankerFit]:
    """The configured ranking stage behind ``serving``: the label carve and retriever
    (``label``, else fitted here by :func:`fit_label_retriever`), the lists, the ranker.

    Returns:
        The label retriever's fit (for its timing) and the ranker's.
    """
    rcfg = cfg.ranker
    carve, label_fit = label if label is not None else fit_label_retriever(cfg, data, state)
    books = book_feature_table(data.books, state)
    sources = candidate_sources(cfg)
    examples = build_ranker_examples(
        carve, label_fit.recommender(), books, sources, rcfg.max_users, int(cfg.seed)
    )
    sizes = {"sizes": state.sizes(), "num_features": len(FEATURES)}
    ranker: nn.Module = hydra.utils.instantiate(rcfg.model, **sizes)
    stage = ServingStage(serving, sources.fit(data), sources, books, log_popularity(data))
    ranker_fit = fit_ranker(
        examples, ranker, {**sizes, **_plain(rcfg.model)}, ranker_loop(cfg), stage, data
    )
    return label_fit, ranker_fit


REPORT_COLUMNS = (
    "recall@20",
    "ndcg@20",
    "hit_rate@20",
    "coverage@20",
    "train_seconds",
    "examples/s",
)
TEST = "test"  # metric prefix of the test carve's figures in a bundle's metrics


@dataclass(frozen=True)
class TrainingRun:
    """A whole training run: its fits, validation and test-carve rows and the bundle it wrote.

    Attributes:
        metrics: the bundle's top-line metrics (two-tower, and ``two_stage/*`` with a ranker;
            the test carve's under ``test/``).
        rows: per-model validation rows (popularity, two_tower, and the ranking stage's).
        test_rows: the same models on the test carve (empty when the split has none).
        bundle: the bundle version written.
        retriever: the serving retriever's fit.
        ranker: the ranking stage's fit, when enabled.
    """

    metrics: dict[str, float]
    rows: dict[str, dict[str, Any]]
    bundle: Path
    retriever: RetrieverFit
    ranker: RankerFit | None = None
    test_rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    label_retriever: RetrieverFit | None = None

    def report(self, name: str) -> None:
        """Print the validation table (and the test carve's) and where the bundle went."""
        if not self.rows:
            print(f"{name}: fit on every interaction (fit=all); nothing held out to report on")
        else:
            print_table(self.rows, REPORT_COLUMNS, title=f"{name}: full-catalogue validation")
        if self.test_rows:
            print_table(
                self.test_rows,
                REPORT_COLUMNS[:4],
                title=f"{name}: test carve (reported only; history = train + validation)",
            )
        print(f"bundle written to {self.bundle}")

    def as_dict(self) -> dict[str, Any]:
        """The ``train`` job's result (what tests, benchmarks and sweeps read)."""
        return {
            "metrics": self.metrics,
            "rows": self.rows,
            "test_rows": self.test_rows,
            "popularity": self.rows.get("popularity"),
            "bundle": str(self.bundle),
            **training_facts(self.retriever, self.ranker, self.label_retriever),
            "tower_args": self.retriever.tower_args,
        }


def training_facts(
    retriever: RetrieverFit, ranker: RankerFit | None, label: RetrieverFit | None = None
) -> dict[str, Any]:
    """Facts about a run: the retriever's, the ranker's under ``ranker`` and its label
    retriever's under ``label_retriever`` (the bundle's ``eval/metrics.json`` records them
    under ``training``)."""
    facts = retriever.facts()
    if ranker is not None:
        facts["ranker"] = ranker.facts()
    if label is not None:
        facts["label_retriever"] = label.facts()
    return facts


def run_training(cfg: DictConfig, data: PreparedData, parent: str | None = None) -> TrainingRun:
    """Features -> retriever -> (ranking stage) -> index -> bundle, as ``cfg`` says;
    ``parent``: the version the bundle is trained to replace (its manifest's parent). The
    fits run where ``engine`` says (one Ray for all of them with ``engine=ray``)."""
    engine = training_engine(cfg)
    token = _RUN_ENGINE.set(engine)
    try:
        with engine.session():
            return _run_training(cfg, data, parent)
    finally:
        _RUN_ENGINE.reset(token)


def _run_training(cfg: DictConfig, data: PreparedData, parent: str | None) -> TrainingRun:
    state = fit_features(hydra.utils.instantiate(cfg.features), data)
    # the label retriever first: with ranker.serving_retriever=continue the serving one
    # starts from its weights
    carved = fit_label_retriever(cfg, data, state) if cfg.ranker.enabled else None
    start = carved[1].module if carved and continues_label_retriever(cfg) else None
    retriever = fit_retriever_from(cfg, data, state, start=start)
    serving = retriever.recommender()
    ks = list(cfg.eval.ks)
    ranker = label = None
    if carved is not None:
        label, ranker = fit_ranking_from(cfg, data, state, serving, carved)
    rows: dict[str, dict[str, Any]] = {}
    metrics: dict[str, float] = {}
    if data.val.height:  # nothing to report on after fit=all
        rows = model_rows(data, EvalSet.from_prepared(data), serving, ranker, ks)
        rows["two_tower"].update(
            {"train_seconds": retriever.train_seconds, "examples/s": retriever.examples_per_second}
        )
        metrics = {k: v for k, v in rows["two_tower"].items() if k not in REPORT_COLUMNS[4:]}
        if ranker is not None and label is not None:
            rows["two_stage"]["train_seconds"] = (
                label.train_seconds + ranker.train_seconds + ranker.examples_seconds
            )
            metrics.update(
                {f"two_stage/{k}": v for k, v in rows["two_stage"].items() if k != "train_seconds"}
            )
    test_rows: dict[str, dict[str, Any]] = {}
    if data.test.height:
        test_rows = model_rows(data, EvalSet.from_prepared(data, TEST), serving, ranker, ks)
        for model, key in (("two_tower", ""), ("two_stage", "two_stage/")):
            if model in test_rows:
                metrics.update({f"{TEST}/{key}{k}": v for k, v in test_rows[model].items()})
    indexed = index_retriever(retriever, data, hydra.utils.instantiate(cfg.index), cfg.seed)
    facts = training_facts(retriever, ranker, label)
    resolved = OmegaConf.to_yaml(cfg, resolve=True)
    contents = BundleContents(
        data, retriever, indexed, metrics, facts, resolved, ranker, config_hash(cfg), parent
    )
    path = write_bundle(contents, cfg.bundle.root, str(cfg.bundle.name), bool(cfg.bundle.promote))
    return TrainingRun(metrics, rows, path, retriever, ranker, test_rows, label)


def model_rows(
    data: PreparedData,
    eval_set: EvalSet,
    serving: TwoTowerRecommender,
    ranker: RankerFit | None,
    ks: list[int],
) -> dict[str, dict[str, Any]]:
    """Every model of the run on one evaluation set: popularity, the two-tower and, with a
    ranker, each candidate source alone and the two-stage pipeline."""
    rows: dict[str, dict[str, Any]] = {
        "popularity": evaluate(PopularityRecommender.from_prepared(data), eval_set, ks=ks),
        "two_tower": evaluate(serving, eval_set, ks=ks),
    }
    if ranker is not None:
        sources = ranker.serving.sources
        rows["cooccurrence"] = evaluate(sources.cooccurrence, eval_set, ks=ks)
        if sources.mf is not None:
            rows["mf"] = evaluate(sources.mf, eval_set, ks=ks)
        if sources.ease is not None:
            rows["ease"] = evaluate(sources.ease, eval_set, ks=ks)
        rows["two_stage"] = evaluate(ranker.pipeline, eval_set, ks=ks)
    return rows
