"""Every Recommender passes the same contract: k unique books, none already read, OOV users ok."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from recsys.data.prepared import PreparedData
from recsys.features.vocab import NUM_RESERVED, OOV
from recsys.inference.popularity import PopularityRecommender
from recsys.types import Recommender


def _models(prepared: PreparedData) -> list[Recommender]:
    models: list[Recommender] = [PopularityRecommender.from_prepared(prepared)]
    if importlib.util.find_spec("implicit"):
        from recsys.baselines.als import ALSRecommender

        models.append(ALSRecommender.from_prepared(prepared, factors=16, iterations=3))
    return models


@pytest.fixture(scope="module")
def models(prepared: PreparedData) -> list[Recommender]:
    return _models(prepared)


def test_protocol(models: list[Recommender]) -> None:
    for model in models:
        assert isinstance(model, Recommender)


def test_k_unique_unseen_real_books(models: list[Recommender], prepared: PreparedData) -> None:
    train = prepared.matrix("train")
    users = np.arange(NUM_RESERVED, NUM_RESERVED + 40)
    for model in models:
        top, scores = model.recommend(users, train[users], k=25)
        assert top.shape == (40, 25)
        assert scores.shape == (40, 25)
        for row, user in zip(top, users, strict=True):
            assert len(set(row.tolist())) == 25
            assert (row >= NUM_RESERVED).all()
            assert set(row.tolist()).isdisjoint(train[user].indices.tolist())
        assert (np.diff(scores, axis=1) <= 1e-6).all(), type(model).__name__


def test_oov_user_with_no_history(models: list[Recommender], prepared: PreparedData) -> None:
    empty = prepared.matrix("train")[[OOV]]
    empty.data[:] = 0
    empty.eliminate_zeros()
    for model in models:
        top, _ = model.recommend(np.array([OOV]), empty, k=10)
        assert top.shape == (1, 10)
        assert (top >= NUM_RESERVED).all()
