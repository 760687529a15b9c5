"""Shared fixtures. Tests never touch the network or wandb, and run torch single-threaded."""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ["WANDB_MODE"] = "disabled"

import pytest

from recsys.data.io import Dataset
from recsys.data.prepared import PreparedData, prepare
from recsys.data.split import random_holdout
from recsys.data.synthetic import generate

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("RECSYS_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def synthetic() -> Dataset:
    """A small synthetic dataset with planted genres (fast to make)."""
    return generate(n_users=600, n_books=400, n_genres=8, authors_per_genre=6, seed=1)


@pytest.fixture(scope="session")
def prepared(synthetic: Dataset) -> PreparedData:
    return prepare(synthetic, partial(random_holdout, fraction=0.2, seed=0))


@pytest.fixture
def shared_data() -> Path:
    """The read-only real datasets; tests using it skip when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def trained_bundle(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The whole training pipeline (retrieval, index, ranker) on small synthetic data, once."""
    from recsys.jobs.train import main as train_main
    from tests.helpers.hydra import compose_config

    root = tmp_path_factory.mktemp("train")
    cfg = compose_config(
        "train", root, ["experiment=synthetic_fast", "callbacks.progress_bar=null"]
    )
    result = train_main(cfg)
    result["root"] = root
    result["data"] = PreparedData.load(root / "data" / "processed" / "synthetic")
    return result


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A real Redis server on loopback for the session (skips when it cannot start)."""
    from tests.helpers.redis_server import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server.url
    server.stop()
