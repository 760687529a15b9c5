"""EASE (Steck 2019, "Embarrassingly Shallow Autoencoders for Sparse Data"): a book x book
weight matrix in closed form, the strongest known baseline on Amazon-Book.

With ``X`` the binary user x book matrix and ``P = (XᵀX + λI)⁻¹``::

    B = I - P · diag(1 / diag(P)),   i.e. B_ij = -P_ij / P_jj,   B_ii = 0

and a user's score for book ``j`` is ``Σ_i x_i B_ij`` (their history row times ``B``). The
inverse is a dense ``n_books²`` solve (Amazon-Book, 24.9k books: a 2.5 GB float32 Gram matrix,
about 70 s of Cholesky factor and inverse on 2 cores).

Dense weights are the baseline. Serving keeps each book's ``k`` largest positive weights (a
sparse table of the same shape as co-occurrence: ``k`` x 24.9k entries instead of 620 M), the
candidate source and ranker feature; benchmarks/baselines.py measures what the pruning costs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp
import torch

from recsys.data.prepared import PreparedData
from recsys.errors import BundleError, DataError
from recsys.inference.base import ScoringRecommender

MAX_BOOKS = 40_000  # default limit: a dense fit over more books needs over 12 GiB
PRUNE_CHUNK = 1024  # rows pruned at once (memory ~ chunk x n_books x 4 bytes)
SETTINGS = "ease.json"


def ease_weights(
    interactions: sp.csr_matrix, l2: float = 200.0, max_books: int = MAX_BOOKS
) -> np.ndarray:
    """Dense ``[n_books, n_books]`` float32 EASE weights from a user x book matrix (any
    positive value counts as read); books nobody read get zero rows and columns.

    ``max_books``: refuse larger catalogues (memory ~ 8 x books² bytes) with a message.
    """
    if l2 <= 0:
        raise DataError(f"EASE needs a positive l2 (λ), got {l2}.")
    n_books = interactions.shape[1]
    if n_books > max_books:
        raise DataError(
            f"EASE over {n_books} books needs ~{8 * n_books**2 / 2**30:.0f} GiB (the limit is "
            f"{max_books} books): set ranker.ease.enabled=false, or raise ranker.ease.max_books "
            "on a machine with the memory, or fit over the most-read books "
            "(ranker.ease.top_books)."
        )
    binary = (interactions > 0).astype(np.float32).tocsr()
    gram = np.asarray((binary.T @ binary).toarray(), dtype=np.float32)
    gram[np.diag_indices_from(gram)] += np.float32(l2)
    matrix = torch.from_numpy(gram)
    factor = torch.linalg.cholesky(matrix)
    del matrix, gram
    # LAPACK leaves P column-major; P is symmetric, so its transpose is the same matrix laid
    # out row by row, which history @ B reads a row at a time (column-major: ~20x slower)
    inverse = torch.cholesky_inverse(factor).T
    del factor
    diagonal = torch.diagonal(inverse).clone()
    inverse.div_(-diagonal)  # column j divided by -P_jj
    inverse.fill_diagonal_(0.0)
    weights = inverse.numpy()
    read = np.asarray(binary.sum(0)).ravel() > 0
    weights[~read, :] = 0.0  # unread books: weights of the ridge alone, not of any reader
    weights[:, ~read] = 0.0
    return weights


def most_read(interactions: sp.csr_matrix, top_books: int | None) -> np.ndarray | None:
    """Sorted indices of the ``top_books`` books with the most readers (ties: the lower
    index), or None when that is every book (``top_books`` None or not below the count)."""
    if top_books is None:
        return None
    if top_books < 1:
        raise DataError(
            f"EASE top_books must be at least 1 (or null for every book), got {top_books}."
        )
    n_books = interactions.shape[1]
    if top_books >= n_books:
        return None
    readers = np.asarray((interactions > 0).sum(0)).ravel()
    order = np.argsort(-readers, kind="stable")
    return np.sort(order[:top_books])


def prune(weights: np.ndarray, k: int) -> sp.csr_matrix:
    """Keep each row's ``k`` largest positive weights (ties: the lower column first)."""
    if k < 1:
        raise DataError(f"EASE pruning needs k >= 1, got {k}.")
    n = weights.shape[0]
    keep = min(k, n)
    rows, cols, vals = [], [], []
    for start in range(0, n, PRUNE_CHUNK):
        block = weights[start : start + PRUNE_CHUNK]
        top = np.argpartition(-block, keep - 1, axis=1)[:, :keep]
        values = np.take_along_axis(block, top, axis=1)
        positive = values > 0
        rows.append(np.repeat(np.arange(start, start + block.shape[0]), keep)[positive.ravel()])
        cols.append(top[positive])
        vals.append(values[positive])
    matrix = sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=weights.shape,
        dtype=np.float32,
    )
    matrix.sort_indices()
    return matrix


class EaseRecommender(ScoringRecommender):
    """Scores = binary history row @ weights (dense, or pruned to ``k`` per book).

    Args:
        weights: ``[n_books, n_books]``: a dense array, or a sparse matrix (pruned).
        l2: the λ the weights were fit with (recorded in the bundle).
    """

    def __init__(self, weights: np.ndarray | sp.spmatrix, l2: float) -> None:
        self.weights: np.ndarray | sp.csr_matrix = (
            sp.csr_matrix(weights, dtype=np.float32)
            if sp.issparse(weights)
            else np.asarray(weights, dtype=np.float32)
        )
        self.l2 = float(l2)
        self.n_books = self.weights.shape[0]

    @classmethod
    def fit(
        cls,
        interactions: sp.csr_matrix,
        l2: float = 200.0,
        k: int | None = None,
        max_books: int = MAX_BOOKS,
        top_books: int | None = None,
    ) -> EaseRecommender:
        """Fit on a user x book matrix; ``k``: prune to each book's ``k`` largest weights.

        ``top_books``: fit over the ``top_books`` most-read books only (ties: the lower book
        index); the others get no weights, neither as history nor as candidates. The solve is
        cubic in the books: Amazon-Book's 16,000 most-read of 24.9k books (93 % of the reads)
        take about a quarter of the time. ``max_books`` then limits the subset.
        """
        chosen = most_read(interactions, top_books)
        if chosen is None:
            weights = ease_weights(interactions, l2, max_books)
            return cls(weights if k is None else prune(weights, k), l2)
        n_books = interactions.shape[1]
        inner = ease_weights(sp.csr_matrix(interactions)[:, chosen], l2, max_books)
        if k is None:
            dense = np.zeros((n_books, n_books), dtype=np.float32)
            dense[np.ix_(chosen, chosen)] = inner
            return cls(dense, l2)
        kept = prune(inner, k).tocoo()
        weights = sp.csr_matrix(
            (kept.data, (chosen[kept.row], chosen[kept.col])), shape=(n_books, n_books)
        )
        weights.sort_indices()
        return cls(weights, l2)

    @classmethod
    def from_prepared(
        cls,
        data: PreparedData,
        l2: float = 200.0,
        k: int | None = None,
        max_books: int = MAX_BOOKS,
        top_books: int | None = None,
    ) -> EaseRecommender:
        """Fit on a prepared dataset's training split."""
        return cls.fit(data.matrix("train"), l2, k, max_books, top_books)

    @property
    def sparse(self) -> bool:
        return sp.issparse(self.weights)

    def pruned(self, k: int) -> EaseRecommender:
        """The same model keeping each book's ``k`` largest positive weights."""
        if self.sparse:
            raise ValueError("these EASE weights are pruned already")
        assert isinstance(self.weights, np.ndarray)
        return EaseRecommender(prune(self.weights, k), self.l2)

    def with_books(self, n_books: int) -> EaseRecommender:
        """A copy covering ``n_books`` (books added since the fit get no weights)."""
        if not self.sparse:
            raise ValueError("only pruned EASE weights grow with the catalogue")
        weights = sp.csr_matrix(self.weights, copy=True)
        weights.resize((n_books, n_books))
        return EaseRecommender(weights, self.l2)

    def score(self, users: np.ndarray, history: sp.csr_matrix) -> np.ndarray:
        binary = (history > 0).astype(np.float32).tocsr()
        product = binary @ self.weights
        if sp.issparse(product):
            product = product.toarray()
        return np.asarray(product, dtype=np.float32)

    def explain(self, history: list[int], book: int) -> list[tuple[int, float]]:
        """History books whose weight toward ``book`` is positive, strongest first."""
        column: Any = self.weights[history, :][:, [book]]
        values = column.toarray().ravel() if sp.issparse(column) else np.ravel(column)
        order = np.argsort(-values)
        return [(history[i], float(values[i])) for i in order if values[i] > 0]

    def save(self, folder: str | Path) -> None:
        """``weights.parquet`` (pruned weights only) and ``ease.json``."""
        if not self.sparse:
            raise ValueError("prune the EASE weights (pruned(k)) before saving them")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        weights = sp.csr_matrix(self.weights)
        coo = weights.tocoo()
        pl.DataFrame(
            {"book_idx": coo.row, "neighbour_idx": coo.col, "weight": coo.data}
        ).write_parquet(folder / "weights.parquet")
        settings = {"l2": self.l2, "k": int(np.diff(weights.indptr).max(initial=0))}
        (folder / SETTINGS).write_text(json.dumps(settings))

    @classmethod
    def load(cls, folder: str | Path, n_books: int) -> EaseRecommender:
        folder = Path(folder)
        if not (folder / SETTINGS).is_file():
            raise BundleError(f"{folder} holds no EASE weights ({SETTINGS} is missing).")
        settings = json.loads((folder / SETTINGS).read_text())
        frame = pl.read_parquet(folder / "weights.parquet")
        rows = frame.get_column("book_idx").to_numpy()
        cols = frame.get_column("neighbour_idx").to_numpy()
        if frame.height and max(rows.max(), cols.max()) >= n_books:
            raise BundleError(f"EASE weights in {folder} name books beyond the {n_books} known.")
        matrix = sp.csr_matrix(
            (frame.get_column("weight").to_numpy(), (rows, cols)), shape=(n_books, n_books)
        )
        return cls(matrix, settings["l2"])
