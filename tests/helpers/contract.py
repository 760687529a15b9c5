"""The contract every ``recsys.types.Recommender`` implementation passes, as a test mixin.

As implicit's ``tests/recommender_base_test.py`` does for its models, one class holds the
checks and each implementation runs them by subclassing it::

    class TestPopularityContract(RecommenderContract):
        implementation = PopularityRecommender

        @pytest.fixture
        def model(self, popularity: PopularityRecommender) -> Recommender:
            return popularity

A subclass may also override ``data`` (the ``PreparedData`` whose training split is the
history, default: the shared ``prepared`` fixture). The mixin's name does not start with
``Test``, so pytest collects only the subclasses.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest
import scipy.sparse as sp

from recsys.data.prepared import PreparedData
from recsys.features.vocab import NUM_RESERVED, OOV
from recsys.types import Recommender

USERS = np.arange(NUM_RESERVED, NUM_RESERVED + 40)
PADDING = -1
# Scores are compared across calls (batch vs single, FAISS vs numpy): equal up to float error.
RTOL, ATOL = 1e-4, 1e-5


def empty_history(train: sp.csr_matrix, rows: int = 1) -> sp.csr_matrix:
    """``rows`` history rows with no books, as wide as ``train``."""
    return sp.csr_matrix((rows, train.shape[1]), dtype=train.dtype)


def values_at(scores: np.ndarray, top: np.ndarray) -> np.ndarray:
    """``scores[b, top[b, j]]``, ``-inf`` where ``top`` holds padding (-1)."""
    picked = np.take_along_axis(scores, np.maximum(top, 0), axis=1)
    return np.where(top >= 0, picked, -np.inf)


def masked_scores(model: Recommender, users: np.ndarray, history: sp.csr_matrix) -> np.ndarray:
    """``model.score`` with the books ``recommend`` may not return (reserved columns, the
    history's books) set to ``-inf``: what ``recommend(exclude_seen=True)`` ranks."""
    scores = np.array(model.score(users, history), dtype=np.float32, copy=True)
    scores[:, :NUM_RESERVED] = -np.inf
    coo = history.tocoo()
    scores[coo.row, coo.col] = -np.inf
    return scores


def assert_valid_rows(
    top: np.ndarray, scores: np.ndarray, history: sp.csr_matrix, k: int, exclude_seen: bool
) -> None:
    """Shapes ``[batch, k]``; each row: unique real books (never padding 0 / OOV 1), best
    first, then padding slots (index -1, score -inf) only at the end; no history book when
    ``exclude_seen``."""
    assert top.shape == (history.shape[0], k)
    assert scores.shape == (history.shape[0], k)
    assert np.array_equal(top == PADDING, np.isneginf(scores))
    for row, row_scores, seen in zip(top, scores, history, strict=True):
        real = row[row != PADDING]
        assert (row[: real.size] == real).all(), "padding slots come last"
        assert (real >= NUM_RESERVED).all()
        assert len(set(real.tolist())) == real.size
        assert (np.diff(row_scores[: real.size]) <= 1e-6).all()
        if exclude_seen:
            assert set(real.tolist()).isdisjoint(seen.indices.tolist())


class RecommenderContract:
    """What a user of the ``Recommender`` protocol relies on, for one implementation."""

    implementation: ClassVar[type]

    @pytest.fixture
    def model(self) -> Recommender:
        raise NotImplementedError("a contract subclass provides the `model` fixture")

    @pytest.fixture
    def data(self, prepared: PreparedData) -> PreparedData:
        return prepared

    def test_protocol(self, model: Recommender) -> None:
        assert isinstance(model, Recommender)
        assert type(model) is self.implementation
        assert isinstance(model.n_books, int)

    def test_score_is_float32_batch_by_n_books(
        self, model: Recommender, data: PreparedData
    ) -> None:
        train = data.matrix("train")
        scores = model.score(USERS, train[USERS])
        assert scores.dtype == np.float32
        assert scores.shape == (USERS.size, model.n_books)
        assert model.n_books == train.shape[1]
        assert not np.isnan(scores).any()
        assert not np.isposinf(scores).any()

    def test_k_unique_unseen_real_books(self, model: Recommender, data: PreparedData) -> None:
        train = data.matrix("train")
        top, scores = model.recommend(USERS, train[USERS], k=25)
        assert top.shape == (40, 25)
        assert scores.shape == (40, 25)
        for row, user in zip(top, USERS, strict=True):
            assert len(set(row.tolist())) == 25
            assert (row >= NUM_RESERVED).all()
            assert set(row.tolist()).isdisjoint(train[user].indices.tolist())
        assert (np.diff(scores, axis=1) <= 1e-6).all(), type(model).__name__
        assert np.isfinite(scores).all()

    def test_without_exclusion_seen_books_may_come_back(
        self, model: Recommender, data: PreparedData
    ) -> None:
        train = data.matrix("train")
        heavy = np.argsort(-np.diff(train.indptr), kind="stable")[:10]
        top, scores = model.recommend(heavy, train[heavy], k=50, exclude_seen=False)
        assert_valid_rows(top, scores, train[heavy], 50, exclude_seen=False)
        seen_returned = [
            set(row.tolist()) & set(train[user].indices.tolist())
            for row, user in zip(top, heavy, strict=True)
        ]
        assert any(seen_returned), "exclude_seen=False never returned a book already read"

    def test_k_beyond_the_catalogue_pads_with_minus_one_and_neg_inf(
        self, model: Recommender, data: PreparedData
    ) -> None:
        train = data.matrix("train")
        users, k = USERS[:3], model.n_books + 5
        top, scores = model.recommend(users, train[users], k=k)
        assert_valid_rows(top, scores, train[users], k, exclude_seen=True)
        for row, user in zip(top, users, strict=True):
            recommendable = model.n_books - NUM_RESERVED - train[user].nnz
            assert 0 < (row != PADDING).sum() <= recommendable
            assert (row == PADDING).sum() >= k - recommendable

    def test_oov_user_with_no_history(self, model: Recommender, data: PreparedData) -> None:
        train = data.matrix("train")
        top, scores = model.recommend(np.array([OOV]), empty_history(train), k=10)
        assert top.shape == (1, 10)
        assert (top >= NUM_RESERVED).all()
        assert_valid_rows(top, scores, empty_history(train), 10, exclude_seen=True)
        # next to known users in one batch, too
        users = np.concatenate([[OOV], USERS[:3]])
        history = sp.vstack([empty_history(train), train[USERS[:3]]]).tocsr()
        top, scores = model.recommend(users, history, k=10)
        assert_valid_rows(top, scores, history, 10, exclude_seen=True)
        assert (top >= NUM_RESERVED).all()

    def test_batch_rows_match_single_requests(self, model: Recommender, data: PreparedData) -> None:
        train = data.matrix("train")
        users = np.concatenate([USERS[:8], [OOV]])
        history = sp.vstack([train[USERS[:8]], empty_history(train)]).tocsr()
        top, scores = model.recommend(users, history, k=20)
        for i, user in enumerate(users):
            one_top, one_scores = model.recommend(np.array([user]), history[i], k=20)
            np.testing.assert_allclose(scores[i], one_scores[0], rtol=RTOL, atol=ATOL)
            # the same books, ties aside: as good as each other by the single request's scores
            by_single = masked_scores(model, np.array([user]), history[i])
            np.testing.assert_allclose(
                values_at(by_single, top[i : i + 1]),
                values_at(by_single, one_top),
                rtol=RTOL,
                atol=ATOL,
            )

    def test_deterministic(self, model: Recommender, data: PreparedData) -> None:
        train = data.matrix("train")
        first = model.recommend(USERS, train[USERS], k=20)
        second = model.recommend(USERS, train[USERS], k=20)
        np.testing.assert_array_equal(first[0], second[0])
        np.testing.assert_array_equal(first[1], second[1])
        np.testing.assert_array_equal(
            model.score(USERS, train[USERS]), model.score(USERS, train[USERS])
        )

    def test_recommend_is_top_k_of_score(self, model: Recommender, data: PreparedData) -> None:
        """``recommend`` returns the best-scoring unseen books by ``score`` (ties aside)."""
        train = data.matrix("train")
        top, _ = model.recommend(USERS, train[USERS], k=25)
        scores = masked_scores(model, USERS, train[USERS])
        best = -np.sort(-scores, axis=1)[:, :25]
        np.testing.assert_allclose(values_at(scores, top), best, rtol=RTOL, atol=ATOL)
