"""The contract can fail: each of its checks rejects a recommender broken in the way it
guards against (a correct co-occurrence model with one fault put in)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from tests.helpers.contract import RecommenderContract

from recsys.data.prepared import PreparedData
from recsys.features.vocab import OOV
from recsys.inference.base import ScoringRecommender
from recsys.inference.cooccurrence import CooccurrenceRecommender


class Faulty(ScoringRecommender):
    """Delegates to a correct model; subclasses break one thing."""

    def __init__(self, inner: CooccurrenceRecommender) -> None:
        self.inner = inner
        self.n_books = inner.n_books
        self.noise = np.random.default_rng(0).random(inner.n_books).astype(np.float32)

    def score(self, users: np.ndarray, history: sp.csr_matrix) -> np.ndarray:
        return self.inner.score(users, history)


class Float64Scores(Faulty):
    def score(self, users: np.ndarray, history: sp.csr_matrix) -> np.ndarray:
        return super().score(users, history).astype(np.float64)


class WrongWidth(Faulty):
    def score(self, users: np.ndarray, history: sp.csr_matrix) -> np.ndarray:
        return super().score(users, history)[:, :-1]


class ReturnsSeen(Faulty):
    def recommend(
        self, users: np.ndarray, history: sp.csr_matrix, k: int, exclude_seen: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        return super().recommend(users, history, k, exclude_seen=False)


class NeverReturnsSeen(Faulty):
    def recommend(
        self, users: np.ndarray, history: sp.csr_matrix, k: int, exclude_seen: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        return super().recommend(users, history, k, exclude_seen=True)


class ReturnsOOV(Faulty):
    def recommend(
        self, users: np.ndarray, history: sp.csr_matrix, k: int, exclude_seen: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        top, scores = super().recommend(users, history, k, exclude_seen)
        top[:, -1] = OOV
        return top, scores


class PadsWithZero(Faulty):
    def recommend(
        self, users: np.ndarray, history: sp.csr_matrix, k: int, exclude_seen: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        top, scores = super().recommend(users, history, k, exclude_seen)
        return np.where(top < 0, 0, top), scores


class EmptyHistoryGetsPadding(Faulty):
    def recommend(
        self, users: np.ndarray, history: sp.csr_matrix, k: int, exclude_seen: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        top, scores = super().recommend(users, history, k, exclude_seen)
        top[np.diff(history.indptr) == 0] = 0
        return top, scores


class BatchDependent(Faulty):
    def score(self, users: np.ndarray, history: sp.csr_matrix) -> np.ndarray:
        return super().score(users, history) + len(users) * self.noise


class Random(Faulty):
    def score(self, users: np.ndarray, history: sp.csr_matrix) -> np.ndarray:
        noise = np.random.default_rng().random(self.n_books, dtype=np.float32)
        return super().score(users, history) + noise


class SkipsTheBest(Faulty):
    def recommend(
        self, users: np.ndarray, history: sp.csr_matrix, k: int, exclude_seen: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        top, scores = super().recommend(users, history, k + 1, exclude_seen)
        return top[:, 1:], scores[:, 1:]


CASES = [
    (Float64Scores, "test_score_is_float32_batch_by_n_books"),
    (WrongWidth, "test_score_is_float32_batch_by_n_books"),
    (ReturnsSeen, "test_k_unique_unseen_real_books"),
    (ReturnsOOV, "test_k_unique_unseen_real_books"),
    (NeverReturnsSeen, "test_without_exclusion_seen_books_may_come_back"),
    (PadsWithZero, "test_k_beyond_the_catalogue_pads_with_minus_one_and_neg_inf"),
    (EmptyHistoryGetsPadding, "test_oov_user_with_no_history"),
    (BatchDependent, "test_batch_rows_match_single_requests"),
    (Random, "test_deterministic"),
    (SkipsTheBest, "test_recommend_is_top_k_of_score"),
]


@pytest.fixture(scope="module")
def cooccurrence(prepared: PreparedData) -> CooccurrenceRecommender:
    return CooccurrenceRecommender.from_prepared(prepared)


@pytest.mark.parametrize(("faulty", "check"), CASES, ids=[c.__name__ for c, _ in CASES])
def test_check_rejects_the_fault(
    faulty: type[Faulty], check: str, cooccurrence: CooccurrenceRecommender, prepared: PreparedData
) -> None:
    contract = RecommenderContract()
    getattr(contract, check)(Faulty(cooccurrence), prepared)  # the model itself passes
    with pytest.raises(AssertionError):
        getattr(contract, check)(faulty(cooccurrence), prepared)


def test_protocol_check_rejects_another_class(cooccurrence: CooccurrenceRecommender) -> None:
    contract = RecommenderContract()
    contract.implementation = CooccurrenceRecommender
    contract.test_protocol(cooccurrence)
    with pytest.raises(AssertionError):
        contract.test_protocol(Faulty(cooccurrence))
