"""Matrix-factorisation candidate source: implicit-feedback ALS item factors, with user vectors
folded in from the user's history at request time.

Training (Hu, Koren & Volinsky 2008, via `implicit`) learns a factor per book and per training
user. Serving never uses the stored user factors: every user, known or new, gets the
closed-form least-squares vector for their current history (the same solve ALS makes in its
user half-step), so a new read changes the vector at once and a new user needs no retraining::

    x_u = (YᵀY + λI + Σ_i (c_i - 1) y_i y_iᵀ)⁻¹ Σ_i c_i y_i,   c_i = alpha * r_ui
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from recsys.data.prepared import PreparedData
from recsys.errors import BundleError, RecsysError
from recsys.features.vocab import NUM_RESERVED
from recsys.index.faiss_index import FaissIndex, IndexSpec, build_index
from recsys.inference.base import ScoringRecommender, row_dots, top_k_excluding

SOLVE_CHUNK = 256  # users solved at once (memory ~ chunk x factors^2 x 4 bytes)
SMALL_BATCH = 64  # below this many users, BLAS runs on one thread (see _blas_for)
ANN_MIN_BOOKS = 10_000  # bundles serve MF top books through HNSW from this catalogue size
ANN = "ann"  # the saved HNSW index: a folder next to the factors (FaissIndex.save)


@cache
def _blas() -> Any:
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController().select(user_api="blas")


@contextlib.contextmanager
def _blas_for(batch: int) -> Iterator[None]:
    """One BLAS thread for request-sized batches: a 256x256 solve gains nothing from threads,
    and OpenBLAS threads left spinning afterwards slowed the next FAISS search of the same
    request about fourfold (two-stage retrieval for one user 10.6 ms -> 2.6 ms)."""
    if batch >= SMALL_BATCH:
        yield
        return
    with _blas().limit(limits=1):
        yield


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
        base = gram + self.regularization * np.eye(factors)
        self._base = base.astype(np.float32)
        self._base_inv = np.linalg.inv(base).astype(np.float32)
        self._ann: FaissIndex | None = None  # HNSW over the factors (see with_ann)

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

    @classmethod
    def from_prepared(cls, data: PreparedData, **params: Any) -> MatrixFactorisation:
        """ALS on a prepared dataset's training split (the ALS baseline, folded in)."""
        return cls.fit(data.matrix("train"), **params)

    def user_vectors(self, history: sp.csr_matrix) -> np.ndarray:
        """``[B, F]`` fold-in vectors (zero for an empty history)."""
        history = sp.csr_matrix(history)
        if history.shape[1] > self.n_books:
            raise RecsysError(
                f"history has {history.shape[1]} book columns, the factors cover {self.n_books}"
            )
        batch, factors = history.shape[0], self.item_factors.shape[1]
        with _blas_for(batch):
            return self._solve(history, batch, factors)

    def _woodbury(self, y: np.ndarray, c: np.ndarray) -> np.ndarray:
        """The fold-in for a history shorter than the factor count, through the Woodbury
        identity on ``A = B + Yᵀ D Y`` (``B = YᵀY + λI`` inverted once, ``D = diag(c - 1)``):
        an ``n x n`` solve instead of ``F x F`` (about 20x less work for a 10-book history at
        F = 256)."""
        d = c - 1.0
        z = y @ self._base_inv  # (n, F) = Y_h B⁻¹
        g = z @ y.T  # (n, n) = Y_h B⁻¹ Y_hᵀ
        m = np.eye(len(c), dtype=np.float32) + d[:, None] * g
        t = np.linalg.solve(m, d * (g @ c))
        return z.T @ (c - t)

    def _solve(self, history: sp.csr_matrix, batch: int, factors: int) -> np.ndarray:
        out = np.zeros((batch, factors), dtype=np.float32)
        long_rows = []
        for row in range(batch):
            lo, hi = history.indptr[row], history.indptr[row + 1]
            if lo == hi:
                continue
            if hi - lo >= factors:
                long_rows.append(row)
                continue
            y = self.item_factors[history.indices[lo:hi]]
            c = self.alpha * (history.data[lo:hi] > 0).astype(np.float32)
            out[row] = self._woodbury(y, c)
        for start in range(0, len(long_rows), SOLVE_CHUNK):
            rows = long_rows[start : start + SOLVE_CHUNK]
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
                out[np.asarray(rows)[nonempty]] = solved
        return out

    def score(self, users: np.ndarray, history: sp.csr_matrix) -> np.ndarray:
        vectors = self.user_vectors(history)
        with _blas_for(len(vectors)):
            return vectors @ self.item_factors.T

    def with_ann(self, m: int = 32, ef_search: int = 128) -> MatrixFactorisation:
        """A copy whose :meth:`top_books` searches an HNSW inner-product index over the real
        books' factors instead of scoring every book. Exact scoring streams all factors from
        memory per user (25 MB for Amazon-Book at 256 factors: about 0.6 ms on one thread);
        HNSW with M=32, efSearch=128 took 0.21 ms at recall@100 0.96 against exact there."""
        rows = np.arange(NUM_RESERVED, self.n_books)
        spec = IndexSpec(kind="hnsw", hnsw_m=m, ef_construction=40)  # FAISS's default build beam
        index = build_index(
            self.item_factors[rows], rows, spec, search_params={"efSearch": ef_search}
        )
        return self.with_index(index)

    def with_index(self, index: FaissIndex) -> MatrixFactorisation:
        """A copy whose :meth:`top_books` searches ``index`` (one :meth:`with_ann` built, or
        its saved copy) instead of scoring every book."""
        if index.dim != self.item_factors.shape[1]:
            raise BundleError(
                f"the MF index has dimension {index.dim}, the factors "
                f"{self.item_factors.shape[1]}; retrain the ranking stage."
            )
        approximate = copy.copy(self)
        approximate._ann = index
        return approximate

    def served(self, folder: str | Path) -> MatrixFactorisation:
        """This source as a bundle serves it: through HNSW from ``ANN_MIN_BOOKS`` books, with
        the index :meth:`save` wrote in ``folder`` (its ``ann/``), else exact. A bundle written
        before the index was saved has it built here (seconds of CPU for Amazon-Book)."""
        if self.n_books < ANN_MIN_BOOKS:
            return self
        saved = Path(folder) / ANN
        if saved.is_dir():
            return self.with_index(FaissIndex.load(saved, dim=self.item_factors.shape[1]))
        return self.with_ann()

    def top_books(self, vectors: np.ndarray, n: int, excluded: list[set[int]]) -> np.ndarray:
        """``[B, n]`` each user's best-scoring books (by ``vectors`` from :meth:`user_vectors`),
        reserved rows and ``excluded`` books left out, best first; ``PADDING`` (-1) where
        fewer qualify."""
        if n <= 0:
            return np.full((len(vectors), 0), -1, dtype=np.int64)
        if self._ann is not None:
            top, _ = self._ann.search_excluding(vectors, n, excluded)
        else:
            with _blas_for(len(vectors)):
                scores = vectors @ self.item_factors.T
            top, _ = top_k_excluding(scores, n, excluded)
        return np.where(top >= 0, top, -1).astype(np.int64)

    def scores_of(self, vectors: np.ndarray, books: np.ndarray) -> np.ndarray:
        """``[B, K]`` scores of the books ``books`` ``[B, K]`` (valid indices) for each user."""
        return row_dots(self.item_factors, books, vectors)

    def with_books(self, n_books: int) -> MatrixFactorisation:
        """A copy covering ``n_books`` books: those added after training get zero factors
        (MF cannot retrieve them). Zero rows leave ``YᵀY`` unchanged, so the solve state is
        shared, not recomputed."""
        extended = copy.copy(self)
        pad = np.zeros((n_books - self.n_books, self.item_factors.shape[1]), dtype=np.float32)
        extended.item_factors = np.concatenate([self.item_factors, pad])
        extended.n_books = n_books
        return extended

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        np.save(folder / "item_factors.npy", self.item_factors, allow_pickle=False)
        params = {"regularization": self.regularization, "alpha": self.alpha}
        (folder / "mf.json").write_text(json.dumps(params, indent=2) + "\n")
        if self.n_books >= ANN_MIN_BOOKS:
            # The HNSW index :meth:`served` uses, built once here instead of by every process
            # that loads the bundle: 9 s of CPU for Amazon-Book that a hot swap spent while
            # requests were being served.
            index = self._ann if self._ann is not None else self.with_ann()._ann
            assert index is not None
            index.save(folder / ANN)

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
