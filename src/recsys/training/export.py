"""The last training step: write everything trained into a new bundle version."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import polars as pl
import torch

from recsys.bundle import layout
from recsys.bundle import writer as bundle_writer
from recsys.bundle.manifest import Manifest, git_info, new_version, utc_now
from recsys.bundle.reader import SCORE_FN
from recsys.bundle.writer import Writer, save_array, save_frame, save_module
from recsys.data.prepared import PreparedData
from recsys.features.pipeline import user_histories
from recsys.inference.popularity import PopularityRecommender
from recsys.report import write_json
from recsys.training.index import IndexedBooks
from recsys.training.ranker import RankerFit
from recsys.training.retriever import RetrieverFit
from recsys.training.summary import training_summary, write_summary


@dataclass(frozen=True)
class BundleContents:
    """Everything a training run puts in its bundle.

    Attributes:
        data: the prepared data the run trained on.
        retriever: the trained towers.
        indexed: the book vectors and their ANN index.
        metrics: top-line offline metrics (manifest and ``eval/metrics.json``).
        training: facts about the run (``eval/metrics.json`` under ``training``).
        resolved_config: the run's config as YAML (``config/resolved.yaml``).
        ranker: the ranking stage, when trained.
        config_hash: the hash of the config sections that shaped the model (manifest).
        parent_version: the version this one was trained to replace (a retrain's production).
    """

    data: PreparedData
    retriever: RetrieverFit
    indexed: IndexedBooks
    metrics: dict[str, float]
    training: dict[str, Any] = field(default_factory=dict)
    resolved_config: str = ""
    ranker: RankerFit | None = None
    config_hash: str | None = None
    parent_version: str | None = None


def write_bundle(contents: BundleContents, root: str | Path, name: str, promote: bool) -> Path:
    """Write ``root/<name>/<new version>/`` (see :mod:`recsys.bundle.layout`).

    Returns:
        The new version's folder.
    """
    return bundle_writer.write_bundle(
        root, _manifest(contents, name), bundle_parts(contents), promote=promote
    )


def _manifest(contents: BundleContents, name: str) -> Manifest:
    sha, dirty = git_info()
    module = contents.retriever.module
    assert module.feature_state is not None, "the retriever module is not attached"
    return Manifest(
        bundle_name=name,
        bundle_version=new_version(),
        created_at=utc_now(),
        git_sha=sha,
        git_dirty=dirty,
        versions=versions(),
        data_fingerprint=contents.data.summary["data_fingerprint"],
        embedding_dim=int(contents.indexed.embeddings.shape[1]),
        score_fn=SCORE_FN,
        temperature=module.task.temperature,
        vocab_sizes=module.feature_state.sizes(),
        metrics=contents.metrics,
        index_spec=asdict(contents.indexed.index.report),
        wandb_run_id=contents.retriever.wandb_run_id,
        data_cutoff=contents.data.summary.get("data_cutoff"),
        config_hash=contents.config_hash,
        parent_version=contents.parent_version,
        fit={"fit": "carve", **contents.data.summary["split"]},
    )


def bundle_parts(contents: BundleContents) -> dict[str, Writer]:
    """Part name -> writer, for every part of a freshly trained bundle."""
    data, retriever = contents.data, contents.retriever
    popularity = PopularityRecommender.from_prepared(data)
    eval_payload = {"metrics": contents.metrics, "training": contents.training}
    served = contents.ranker.pipeline if contents.ranker else retriever.recommender()
    return {
        layout.CONFIG: lambda d: (d / layout.RESOLVED_CONFIG).write_text(contents.resolved_config),
        layout.FEATURES: lambda d: write_features(data, retriever, d),
        layout.TOWERS: lambda d: write_towers(retriever, d),
        layout.EMBEDDINGS: lambda d: save_array(
            contents.indexed.embeddings, d / layout.BOOK_EMBEDDINGS
        ),
        layout.DATA: lambda d: write_histories(data, d),
        layout.FALLBACK: lambda d: popularity.save(d / layout.POPULARITY),
        layout.INDEX: contents.indexed.index.save,
        **(ranking_parts(contents.ranker) if contents.ranker else {}),
        layout.EVAL: lambda d: write_json(d / layout.METRICS, eval_payload),
        layout.SUMMARY: lambda d: write_summary(training_summary(data, served), d),
    }


def write_features(data: PreparedData, retriever: RetrieverFit, folder: Path) -> None:
    """The fitted feature state and the book and user tables it encodes."""
    state = retriever.module.feature_state
    assert state is not None, "the retriever module is not attached"
    state.save(folder)
    save_frame(data.books, folder / layout.BOOKS)
    save_frame(data.users, folder / layout.USERS)


def write_towers(retriever: RetrieverFit, folder: Path) -> None:
    """Both towers: state dict, constructor arguments and TorchScript."""
    module, args = retriever.module, retriever.tower_args
    save_module(module.user_tower, folder, layout.USER_TOWER, args[layout.USER_TOWER])
    save_module(module.book_tower, folder, layout.BOOK_TOWER, args[layout.BOOK_TOWER])


def write_histories(data: PreparedData, folder: Path) -> None:
    """``histories.parquet``: the training carve (what the models saw; popularity features).
    ``known_histories.parquet``: every interaction known per user (training, validation and
    the test carve), what serving and batch scoring read and exclude."""
    save_frame(user_histories(data.train), folder / layout.HISTORIES)
    known = pl.concat([data.train, data.val, data.test], how="diagonal_relaxed")
    save_frame(user_histories(known), folder / layout.KNOWN_HISTORIES)


def ranking_parts(ranking: RankerFit) -> dict[str, Writer]:
    """Bundle parts of the ranking stage: the ranker (with its generator settings), the
    co-occurrence table and, when enabled, the matrix-factorisation source's book factors and
    the EASE source's pruned weights."""

    def write_ranker(folder: Path) -> None:
        save_module(ranking.ranker, folder, layout.RANKER_MODULE, ranking.args)
        write_json(folder / layout.GENERATOR, ranking.serving.spec.generator)

    sources = ranking.serving.sources
    parts: dict[str, Writer] = {
        layout.RANKER: write_ranker,
        layout.COOCCURRENCE: lambda d: sources.cooccurrence.save(d / layout.NEIGHBOURS),
    }
    if sources.mf is not None:
        parts[layout.MF] = sources.mf.save
    if sources.ease is not None:
        parts[layout.EASE] = sources.ease.save
    return parts


def versions() -> dict[str, str]:
    """Versions of the libraries that shape a bundle's files."""
    import faiss

    import recsys

    return {
        "recsys": recsys.__version__,
        "torch": torch.__version__,
        "faiss": faiss.__version__,
        "polars": pl.__version__,
        "lightning": L.__version__,
    }
