"""The bundle's folder layout: the one module that knows part and file names (docs/training.md).

A bundle version is a folder of *parts* (sub-folders written by one writer each) plus
``manifest.json``. Writers, the reader and :func:`recsys.bundle.derive.derive` name parts and
files through these constants, never through string literals of their own. Files inside a part
that a library object writes itself (``FeatureState.save``, ``FaissIndex.save``,
``MatrixFactorisation.save``) keep the names that object chooses.
"""

from __future__ import annotations

from pathlib import Path

# family level: <root>/<bundle name>/LATEST names the promoted version
LATEST = "LATEST"

# parts (sub-folders of a version), in the order a full training writes them
CONFIG = "config"
FEATURES = "features"
TOWERS = "towers"
EMBEDDINGS = "embeddings"
DATA = "data"
FALLBACK = "fallback"
INDEX = "index"
RANKER = "ranker"
COOCCURRENCE = "cooccurrence"
MF = "mf"
EASE = "ease"
EVAL = "eval"
SUMMARY = "summary"  # what live inputs are compared with (drift); absent in older bundles

# the parts of the ranking stage: a ranker retrain replaces all of them
RANKING_PARTS = (RANKER, COOCCURRENCE, MF, EASE)

# files inside parts
RESOLVED_CONFIG = "resolved.yaml"  # config/
BOOKS = "books.parquet"  # features/
USERS = "users.parquet"  # features/
USER_TOWER = "user_tower"  # towers/<name>.{pt,state_dict.pt,json}
BOOK_TOWER = "book_tower"
BOOK_EMBEDDINGS = "books.npy"  # embeddings/
HISTORIES = "histories.parquet"  # data/: the training carve
KNOWN_HISTORIES = "known_histories.parquet"  # data/: every interaction known (all parts)
POPULARITY = "popularity.parquet"  # fallback/
RANKER_MODULE = "ranker"  # ranker/<name>.{pt,state_dict.pt,json}
GENERATOR = "generator.json"  # ranker/: candidate generator settings
NEIGHBOURS = "neighbours.parquet"  # cooccurrence/
MF_META = "mf.json"  # mf/ (written by MatrixFactorisation.save)
EASE_META = "ease.json"  # ease/ (written by EaseRecommender.save)
METRICS = "metrics.json"  # eval/
TRAINING_SUMMARY = "training.json"  # summary/ (recsys.drift.TrainingSummary)


def module_args(folder: Path, name: str) -> Path:
    """Constructor arguments of a saved module (``<name>.json``)."""
    return folder / f"{name}.json"


def module_state(folder: Path, name: str) -> Path:
    """State dict of a saved module (``<name>.state_dict.pt``)."""
    return folder / f"{name}.state_dict.pt"


def module_script(folder: Path, name: str) -> Path:
    """TorchScript export of a saved module (``<name>.pt``)."""
    return folder / f"{name}.pt"


def module_noscript(folder: Path, name: str) -> Path:
    """Why a module could not be scripted (``<name>.noscript.txt``), written instead."""
    return folder / f"{name}.noscript.txt"
