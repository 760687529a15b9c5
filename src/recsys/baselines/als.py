"""Implicit-feedback ALS (Hu, Koren & Volinsky 2008) via the `implicit` library."""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from recsys.data.prepared import PreparedData
from recsys.errors import RecsysError
from recsys.inference.base import ScoringRecommender


class ALSRecommender(ScoringRecommender):
    """Matrix-factorisation baseline; scores are ``user_factors @ item_factors.T``."""

    def __init__(self, user_factors: np.ndarray, item_factors: np.ndarray) -> None:
        self.user_factors = user_factors.astype(np.float32)
        self.item_factors = item_factors.astype(np.float32)
        self.n_books = item_factors.shape[0]

    @classmethod
    def fit(
        cls,
        train: sp.csr_matrix,
        factors: int = 64,
        regularization: float = 0.01,
        alpha: float = 1.0,
        iterations: int = 15,
        seed: int = 0,
    ) -> ALSRecommender:
        """Fit on a user x book confidence matrix (vocab index space)."""
        try:
            from implicit.cpu.als import AlternatingLeastSquares
            from threadpoolctl import threadpool_limits
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise RecsysError("ALS needs the `bench` extra: pip install -e '.[bench]'") from exc
        model = AlternatingLeastSquares(
            factors=factors,
            regularization=regularization,
            alpha=alpha,
            iterations=iterations,
            random_state=seed,
        )
        # implicit runs its own threads; a second BLAS pool only slows it down.
        with threadpool_limits(1, "blas"):
            model.fit(train.astype(np.float32).tocsr(), show_progress=False)
        return cls(np.asarray(model.user_factors), np.asarray(model.item_factors))

    @classmethod
    def from_prepared(cls, data: PreparedData, **params: Any) -> ALSRecommender:
        """Fit on a prepared dataset's training split (weights as confidences)."""
        return cls.fit(data.matrix("train"), **params)

    def score(self, users: np.ndarray, history: sp.csr_matrix) -> np.ndarray:
        return self.user_factors[users] @ self.item_factors.T
