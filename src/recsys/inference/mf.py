"""Matrix-factorisation candidate source: implicit-feedback ALS item factors, with user vectors
folded in from the user's history at request time.

Training (Hu, Koren & Volinsky 2008, via `implicit`) learns a factor per book and per training
user. Serving never uses the stored user factors: every user, known or new, gets the
closed-form least-squares vector for their current history (the same solve ALS makes in its
user half-step), so a new read changes the vector at once and a new user needs no retraining::

    x_u = (YᵀY + λI + Σ_i (c_i - 1) y_i y_iᵀ)⁻¹ Σ_i c_i y_i,   c_i = alpha * r_ui
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from recsys.errors import BundleError, RecsysError
from recsys.inference.base import ScoringRecommender

SOLVE_CHUNK = 256  # users solved at once (memory ~ chunk x factors^2 x 4 bytes)


class MatrixFactorisation(ScoringRecommender):
    """Book factors plus the fold-in that turns any history into a user vector.

    Args:
        item_factors: ``[n_books, F]`` (rows of reserved and unseen books are zero).
        regularization: the ALS ridge term λ.
        alpha: confidence per read (``c = alpha * r``).
    """

    def __init__(self, item_factors: np.ndarray, regularization: float, alpha: float) -> None:
        self.item_factors = np.ascontiguousarray(item_factors, dtype=np.float32)
        self.regularization, self.alpha = float(regularization), float(alpha)
        self.n_books = self.item_factors.shape[0]
        factors = self.item_factors.shape[1]
        gram = self.item_factors.T.astype(np.float64) @ self.item_factors.astype(np.float64)
        self._base = (gram + self.regularization * np.eye(factors)).astype(np.float32)

    @classmethod
    def fit(
        cls,
        interactions: sp.csr_matrix,
        factors: int = 64,
        regularization: float = 1.0,
        alpha: float = 20.0,
        iterations: int = 15,
        seed: int = 0,
    ) -> MatrixFactorisation:
        """ALS on a user x book matrix (any positive value counts as one read)."""
        from recsys.baselines.als import ALSRecommender

        binary = (interactions > 0).astype(np.float32).tocsr()
        als = ALSRecommender.fit(binary, factors, regularization, alpha, iterations, seed)
        return cls(als.item_factors, regularization, alpha)

    def user_vectors(self, history: sp.csr_matrix) -> np.ndarray:
        """``[B, F]`` fold-in vectors (zero for an empty history)."""
        history = sp.csr_matrix(history)
        if history.shape[1] > self.n_books:
            raise RecsysError(
                f"history has {history.shape[1]} book columns, the factors cover {self.n_books}"
            )
        batch, factors = history.shape[0], self.item_factors.shape[1]
        out = np.zeros((batch, factors), dtype=np.float32)
        for start in range(0, batch, SOLVE_CHUNK):
            rows = range(start, min(start + SOLVE_CHUNK, batch))
            a = np.repeat(self._base[None], len(rows), axis=0)
            b = np.zeros((len(rows), factors), dtype=np.float32)
            nonempty = np.zeros(len(rows), dtype=bool)
            for j, row in enumerate(rows):
                lo, hi = history.indptr[row], history.indptr[row + 1]
                if lo == hi:
                    continue
                y = self.item_factors[history.indices[lo:hi]]  # (n, F)
                c = self.alpha * (history.data[lo:hi] > 0).astype(np.float32)  # (n,)
                a[j] += (y * (c - 1.0)[:, None]).T @ y
                b[j] = c @ y
                nonempty[j] = True
            if nonempty.any():
                solved = np.linalg.solve(a[nonempty], b[nonempty][..., None])[..., 0]
                out[start + np.flatnonzero(nonempty)] = solved
        return out

    def score(self, users: np.ndarray, history: sp.csr_matrix) -> np.ndarray:
        return self.user_vectors(history) @ self.item_factors.T

    def add_books(self, count: int) -> None:
        """Zero factors for ``count`` books added after training (MF cannot retrieve them)."""
        pad = np.zeros((count, self.item_factors.shape[1]), dtype=np.float32)
        self.item_factors = np.concatenate([self.item_factors, pad])
        self.n_books = self.item_factors.shape[0]

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        np.save(folder / "item_factors.npy", self.item_factors, allow_pickle=False)
        params = {"regularization": self.regularization, "alpha": self.alpha}
        (folder / "mf.json").write_text(json.dumps(params, indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | Path, n_books: int) -> MatrixFactorisation:
        folder = Path(folder)
        params: dict[str, Any] = json.loads((folder / "mf.json").read_text())
        factors = np.load(folder / "item_factors.npy", allow_pickle=False)
        if factors.ndim != 2 or factors.shape[0] != n_books:
            raise BundleError(
                f"{folder}: item factors have shape {factors.shape}, expected ({n_books}, F)"
            )
        return cls(factors, **params)
