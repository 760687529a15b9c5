"""Scoring a bundle on a retrain's holdout: the same users, the same input histories and the
same held-out books for every bundle, full catalogue, through :func:`recsys.evaluation.evaluate`.

Each bundle is scored in its own vocabulary. A holdout user the bundle never saw is encoded as
unknown (OOV) and gets a vector from the history alone, as serving does; history books it does
not know are left out of the input; a user none of whose history books it knows is answered by
its popularity fallback (serving's answer for a user it knows nothing about). A held-out book
the bundle does not know still counts as a positive it cannot find, so recall is over the same
positives for every bundle.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from recsys.bundle.reader import Bundle
from recsys.evaluation import EvalSet, book_attribute_matrix, evaluate
from recsys.features.vocab import NUM_RESERVED
from recsys.lifecycle.holdout import Holdout
from recsys.types import Recommender


@dataclass(frozen=True)
class HoldoutScore:
    """One bundle on the holdout.

    Attributes:
        version: the bundle version.
        metrics: :func:`recsys.evaluation.evaluate`'s metrics.
        p99_ms: in-process p99 latency of one user's top-k (None when not measured).
        unknown_users: holdout users the bundle never saw (answered from history).
        fallback_users: holdout users answered by the popularity fallback.
    """

    version: str
    metrics: dict[str, float]
    p99_ms: float | None
    unknown_users: int
    fallback_users: int

    def row(self) -> dict[str, Any]:
        """The report row: metrics, latency and how many users the bundle did not know."""
        return {
            "version": self.version,
            **self.metrics,
            "p99_ms": self.p99_ms,
            "unknown_users": self.unknown_users,
            "fallback_users": self.fallback_users,
        }


class HoldoutRecommender:
    """A bundle's recommender addressed by holdout row: row ``r`` is the user at
    ``users[r]`` in the bundle's vocabulary; rows without a known history book go to
    ``fallback``.

    Args:
        model: the bundle's served recommender (two-stage, or two-tower without a ranker).
        users: ``[rows]`` the bundle's user index of each holdout user (OOV when unknown).
        fallback: the bundle's popularity fallback.
    """

    def __init__(self, model: Recommender, users: np.ndarray, fallback: Recommender) -> None:
        self.model, self.users, self.fallback = model, users, fallback
        self.n_books = model.n_books

    def score(self, users: np.ndarray, history: sp.csr_matrix) -> np.ndarray:
        """``[rows, n_books]``: the model's scores, the fallback's where a row's history has
        no book the bundle knows (as :meth:`recommend` routes them)."""
        out = np.empty((len(users), self.n_books), dtype=np.float32)
        known = np.diff(history.indptr) > 0
        for rows, model in ((known, self.model), (~known, self.fallback)):
            if rows.any():
                out[rows] = model.score(self.users[users[rows]], history[rows])
        return out

    def recommend(
        self, users: np.ndarray, history: sp.csr_matrix, k: int, exclude_seen: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        top = np.full((len(users), k), -1, dtype=np.int64)
        scores = np.full((len(users), k), -np.inf, dtype=np.float32)
        known = np.diff(history.indptr) > 0
        for rows, model in ((known, self.model), (~known, self.fallback)):
            if rows.any():
                found = model.recommend(self.users[users[rows]], history[rows], k, exclude_seen)
                top[rows], scores[rows] = found
        return top, scores


def holdout_eval_set(bundle: Bundle, holdout: Holdout) -> tuple[EvalSet, HoldoutRecommender]:
    """The holdout in ``bundle``'s vocabulary, and its recommender addressed by holdout row."""
    histories = holdout.histories.get_column("history").to_list()
    train = bundle.history_matrix(histories)
    n_books = bundle.state.books.size
    books = holdout.positives.get_column("books")
    rows = np.repeat(np.arange(books.len()), books.list.len().to_numpy())
    cols = bundle.state.books.encode(books.explode()).astype(np.int64)
    unknown = cols < NUM_RESERVED
    # a book the bundle does not know: a column of its own that no list can hold
    cols[unknown] = n_books + np.arange(int(unknown.sum()))
    val = sp.csr_matrix(
        (np.ones(rows.size, dtype=np.float32), (rows, cols)),
        shape=(len(histories), n_books + int(unknown.sum())),
    )
    eval_set = EvalSet(
        train,
        val,
        np.arange(len(histories)),
        bundle.popularity_counts,
        bundle.histories.height,
        book_attribute_matrix(bundle.books, n_books),
    )
    model: Recommender = bundle.two_stage() if bundle.has_ranker else bundle.recommender()
    users = bundle.state.users.encode(holdout.histories.get_column("user_id"))
    return eval_set, HoldoutRecommender(model, users.astype(np.int64), bundle.popularity)


def score_bundle(
    bundle: Bundle, holdout: Holdout, ks: list[int], latency_users: int, seed: int = 0
) -> HoldoutScore:
    """``bundle`` on ``holdout``: full-catalogue metrics at ``ks`` and the p99 latency of one
    user's top ``max(ks)`` over ``latency_users`` sampled holdout users (0: not measured)."""
    eval_set, model = holdout_eval_set(bundle, holdout)
    metrics = evaluate(model, eval_set, ks=ks)
    p99 = None
    if latency_users > 0:
        p99 = p99_latency_ms(model, eval_set.train, latency_users, max(ks), seed)
    return HoldoutScore(
        bundle.version,
        metrics,
        p99,
        int((model.users < NUM_RESERVED).sum()),
        int((np.diff(eval_set.train.indptr) == 0).sum()),
    )


def p99_latency_ms(
    model: Recommender, history: sp.csr_matrix, users: int, k: int, seed: int = 0
) -> float:
    """In-process p99 latency (ms) of one user's top ``k``, over ``users`` sampled rows of
    ``history`` answered one at a time after a short warm-up (a request's model work)."""
    picked = np.random.default_rng(seed).permutation(history.shape[0])[:users]
    requests = [(np.array([row]), history[row : row + 1]) for row in picked]
    for row, matrix in requests[:3]:
        model.recommend(row, matrix, k)
    seconds = []
    for row, matrix in requests:
        started = time.perf_counter()
        model.recommend(row, matrix, k)
        seconds.append(time.perf_counter() - started)
    return float(np.percentile(seconds, 99) * 1000)
