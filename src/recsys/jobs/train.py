"""`python training/train.py` / `recsys train`: two-tower retrieval -> a model bundle."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import numpy as np
import polars as pl
import torch
from lightning.pytorch.loggers import Logger, WandbLogger
from omegaconf import DictConfig, OmegaConf

from recsys.bundle.manifest import Manifest, git_info, new_version, utc_now
from recsys.bundle.reader import SCORE_FN
from recsys.bundle.writer import save_array, save_frame, save_module, write_bundle
from recsys.data.prepared import PreparedData
from recsys.evaluation import EvalSet, evaluate
from recsys.features.pipeline import FeatureState, user_histories
from recsys.inference.popularity import PopularityRecommender
from recsys.jobs.build_index import index_books
from recsys.jobs.common import load_or_prepare
from recsys.jobs.train_ranker import label_carve, train_ranker
from recsys.lightning.callbacks import recommender_from_module
from recsys.lightning.retrieval import RetrievalDataModule, TwoTowerModule
from recsys.report import print_table, write_json

log = logging.getLogger(__name__)


def _tower_args(node: DictConfig, sizes: dict[str, int]) -> dict[str, Any]:
    args = OmegaConf.to_container(node, resolve=True)
    assert isinstance(args, dict)
    args.pop("_target_", None)
    return {"sizes": sizes, **args}


def build_module(cfg: DictConfig, state: FeatureState) -> tuple[TwoTowerModule, dict[str, Any]]:
    """Instantiate towers with data-derived sizes, then the LightningModule around them."""
    sizes = state.sizes()
    user_tower = hydra.utils.instantiate(cfg.model.user_tower, sizes=sizes)
    book_tower = hydra.utils.instantiate(cfg.model.book_tower, sizes=sizes)
    module = hydra.utils.instantiate(cfg.model, user_tower=user_tower, book_tower=book_tower)
    args = {
        "user_tower": _tower_args(cfg.model.user_tower, sizes),
        "book_tower": _tower_args(cfg.model.book_tower, sizes),
    }
    return module, args


def _loggers(cfg: DictConfig) -> list[Logger]:
    if not cfg.get("logger"):
        return []
    return [hydra.utils.instantiate(node) for node in cfg.logger.values() if node is not None]


def _callbacks(cfg: DictConfig, eval_set: EvalSet, tag: str) -> list[L.Callback]:
    out = []
    for name, node in (cfg.get("callbacks") or {}).items():
        if node is None:
            continue
        extra = {"dirpath": f"{node.dirpath}/{tag}"} if node.get("dirpath") else {}
        obj = hydra.utils.instantiate(node, **extra)
        out.append(obj(eval_set=eval_set) if name == "evaluation" else obj)
    return out


def fit_state(cfg: DictConfig, data: PreparedData) -> FeatureState:
    """Fit the feature pipeline on the training split (the only place it is fitted)."""
    pipeline = hydra.utils.instantiate(cfg.features)
    return pipeline.fit(data.train, data.books, data.users, data.user_vocab, data.book_vocab)


def fit(
    cfg: DictConfig, data: PreparedData, state: FeatureState, tag: str = "retriever"
) -> tuple[TwoTowerModule, RetrievalDataModule, dict[str, Any]]:
    """Train the towers; returns the module with the best checkpoint's weights.

    ``tag`` separates the checkpoints of several fits in one run.
    """
    datamodule = RetrievalDataModule(data, state, batch_size=cfg.batch_size, seed=cfg.seed)
    module, args = build_module(cfg, state)
    module.attach(datamodule)
    eval_set = EvalSet.from_prepared(data)
    loggers = _loggers(cfg) if tag == "retriever" else []  # auxiliary fits are not logged
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))  # type: ignore[arg-type]
    trainer: L.Trainer = hydra.utils.instantiate(
        cfg.trainer, logger=loggers or False, callbacks=_callbacks(cfg, eval_set, tag)
    )
    started = time.perf_counter()
    module.initialise(datamodule)  # part of training time (the spectral SVD: ~2 s)
    trainer.fit(module, datamodule=datamodule)
    seconds = time.perf_counter() - started
    best = getattr(trainer.checkpoint_callback, "best_model_path", "")
    if best:
        log.info("restoring best checkpoint %s", best)
        module.load_state_dict(torch.load(best, weights_only=False)["state_dict"])
    steps = trainer.global_step
    info = {
        "train_seconds": seconds,
        "epochs": trainer.current_epoch,
        "steps": steps,
        "examples_per_second": steps * cfg.batch_size / max(seconds, 1e-9),
        "wandb_run_id": next(
            (lg.experiment.id for lg in loggers if isinstance(lg, WandbLogger)), None
        ),
        "tower_args": args,
    }
    return module, datamodule, info


def export_bundle(
    cfg: DictConfig,
    data: PreparedData,
    module: TwoTowerModule,
    datamodule: RetrievalDataModule,
    metrics: dict[str, float],
    info: dict[str, Any],
    ranking: dict[str, Any] | None = None,
) -> Path:
    """Write the bundle: towers, features, embeddings, histories, popularity, config, metrics."""
    state = datamodule.state
    embeddings = module.book_embeddings().numpy()
    sha, dirty = git_info()
    manifest = Manifest(
        bundle_name=str(cfg.bundle.name),
        bundle_version=new_version(),
        created_at=utc_now(),
        git_sha=sha,
        git_dirty=dirty,
        versions=_versions(),
        data_fingerprint=data.summary["data_fingerprint"],
        embedding_dim=int(embeddings.shape[1]),
        score_fn=SCORE_FN,
        temperature=module.task.temperature,
        vocab_sizes=state.sizes(),
        metrics=metrics,
        wandb_run_id=info.get("wandb_run_id"),
    )
    popularity = PopularityRecommender.from_prepared(data)
    rec = recommender_from_module(module)
    sample = eval_sample(data, cfg.seed)
    queries = rec.encode(rec.features_from_matrix(sample, data.matrix("train")[sample]))
    index = index_books(embeddings, hydra.utils.instantiate(cfg.index), queries)
    manifest.index_spec = asdict(index.report)
    towers = info["tower_args"]
    training = {k: v for k, v in info.items() if k != "tower_args"}

    def write_features(folder: Path) -> None:
        state.save(folder)
        save_frame(data.books, folder / "books.parquet")
        save_frame(data.users, folder / "users.parquet")

    def write_towers(folder: Path) -> None:
        save_module(module.user_tower, folder, "user_tower", towers["user_tower"])
        save_module(module.book_tower, folder, "book_tower", towers["book_tower"])

    parts = {
        "config": lambda d: _write_text(d / "resolved.yaml", OmegaConf.to_yaml(cfg, resolve=True)),
        "features": write_features,
        "towers": write_towers,
        "embeddings": lambda d: save_array(embeddings, d / "books.npy"),
        "data": lambda d: write_histories(data, d),
        "fallback": lambda d: popularity.save(d / "popularity.parquet"),
        "index": index.save,
        **(ranking_parts(cfg, ranking) if ranking else {}),
        "eval": lambda d: _write_json(
            d / "metrics.json", {"metrics": metrics, "training": training}
        ),
    }
    return write_bundle(cfg.bundle.root, manifest, parts, promote=bool(cfg.bundle.promote))


def write_histories(data: PreparedData, folder: Path) -> None:
    """``histories.parquet``: the training carve (what the models saw; popularity features).
    ``known_histories.parquet``: every interaction known per user (training and validation),
    what serving and batch scoring read and exclude."""
    save_frame(user_histories(data.train), folder / "histories.parquet")
    known = pl.concat([data.train, data.val], how="diagonal_relaxed")
    save_frame(user_histories(known), folder / "known_histories.parquet")


def ranking_parts(cfg: DictConfig, ranking: dict[str, Any]) -> dict[str, Any]:
    """Bundle folders of the ranking stage: the ranker, the co-occurrence table and (when
    enabled) the matrix-factorisation source's book factors."""

    def write_ranker(folder: Path) -> None:
        save_module(ranking["ranker"], folder, "ranker", ranking["args"])
        generator = OmegaConf.to_container(cfg.ranker.generator, resolve=True)
        _write_json(folder / "generator.json", generator)

    parts = {
        "ranker": write_ranker,
        "cooccurrence": lambda d: ranking["cooccurrence"].save(d / "neighbours.parquet"),
    }
    if ranking.get("mf") is not None:
        parts["mf"] = ranking["mf"].save
    return parts


def eval_sample(data: PreparedData, seed: int, n: int = 2000) -> np.ndarray:
    """A seeded sample of training users (index tuning queries)."""
    users = np.unique(data.train.get_column("user_idx").to_numpy())
    users = users[users >= 2]
    return np.sort(np.random.default_rng(seed).choice(users, min(n, users.size), replace=False))


def _write_text(path: Path, text: str) -> None:
    path.write_text(text)


def _write_json(path: Path, payload: Any) -> None:
    write_json(path, payload)


def _versions() -> dict[str, str]:
    import faiss
    import polars

    import recsys

    return {
        "recsys": recsys.__version__,
        "torch": torch.__version__,
        "faiss": faiss.__version__,
        "polars": polars.__version__,
        "lightning": L.__version__,
    }


def main(cfg: DictConfig) -> dict[str, Any]:
    """Retrieval, then (if enabled) the ranker; one bundle with everything."""
    L.seed_everything(cfg.seed, workers=True)
    data = load_or_prepare(cfg)
    state = fit_state(cfg, data)
    module, datamodule, info = fit(cfg, data, state)
    serving = recommender_from_module(module.eval())
    eval_set = EvalSet.from_prepared(data)
    ks = list(cfg.eval.ks)
    metrics = evaluate(serving, eval_set, ks=ks)
    rows: dict[str, dict[str, Any]] = {
        "popularity": evaluate(PopularityRecommender.from_prepared(data), eval_set, ks=ks),
        "two_tower": {
            **metrics,
            "train_seconds": info["train_seconds"],
            "examples/s": info["examples_per_second"],
        },
    }
    ranking = None
    if cfg.ranker.enabled:
        carved = label_carve(data, cfg.ranker.label_fraction, cfg.seed + 1)
        label_module, _, label_info = fit(cfg, carved, state, tag="label_retriever")
        ranking = train_ranker(
            cfg, data, state, serving, recommender_from_module(label_module.eval())
        )
        rows["cooccurrence"] = evaluate(ranking["cooccurrence"], eval_set, ks=ks)
        if ranking["mf"] is not None:
            rows["mf"] = evaluate(ranking["mf"], eval_set, ks=ks)
        two_stage = evaluate(ranking["pipeline"], eval_set, ks=ks)
        rows["two_stage"] = {
            **two_stage,
            "train_seconds": label_info["train_seconds"]
            + ranking["train_seconds"]
            + ranking["examples_seconds"],
        }
        metrics = {**metrics, **{f"two_stage/{k}": v for k, v in two_stage.items()}}
        info["ranker"] = {
            k: ranking[k] for k in ("examples", "examples_seconds", "train_seconds", "best_epoch")
        }
    print_table(
        rows,
        ["recall@20", "ndcg@20", "hit_rate@20", "coverage@20", "train_seconds", "examples/s"],
        title=f"{data.name}: full-catalogue validation",
    )
    path = export_bundle(cfg, data, module, datamodule, metrics, info, ranking)
    print(f"bundle written to {path}")
    return {
        "metrics": metrics,
        "rows": rows,
        "popularity": rows["popularity"],
        "bundle": str(path),
        **info,
    }
