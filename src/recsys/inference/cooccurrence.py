"""Item-to-item co-occurrence: books read together, kept to the top neighbours per book.

Similarity is cosine over the binary user x book matrix (co-readers / sqrt(readers_i readers_j)),
so very popular books do not dominate every list. A user's score for a candidate is the sum of
its similarities to the user's history books ("readers of X also read Y").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import scipy.sparse as sp

from recsys.data.prepared import PreparedData
from recsys.inference.base import ScoringRecommender, find_sorted


def top_neighbours(sim: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Keep each row's ``k`` largest entries (ties by column index)."""
    sim = sim.tocsr()
    sim.sort_indices()
    rows, cols, vals = [], [], []
    for i in range(sim.shape[0]):
        start, end = sim.indptr[i], sim.indptr[i + 1]
        if start == end:
            continue
        data = sim.data[start:end]
        idx = sim.indices[start:end]
        keep = np.lexsort((idx, -data))[:k]
        rows.append(np.full(keep.size, i))
        cols.append(idx[keep])
        vals.append(data[keep])
    if not rows:
        return sp.csr_matrix(sim.shape, dtype=np.float32)
    return sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=sim.shape,
        dtype=np.float32,
    )


class CooccurrenceRecommender(ScoringRecommender):
    """Scores = history row @ neighbour table (sparse); also a candidate source for ranking.

    Args:
        neighbours: book x book CSR of similarities, top-``k`` per row, zero diagonal.
    """

    def __init__(self, neighbours: sp.csr_matrix) -> None:
        self.neighbours = neighbours.tocsr().astype(np.float32)
        self.neighbours.sort_indices()  # a copy of its own: sorting leaves the caller's alone
        self.n_books = self.neighbours.shape[0]
        self._keys: np.ndarray | None = None

    def pair_values(self, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
        """``neighbours[rows[i], columns[i]]`` (0 where absent), any shape: one binary search
        in the sorted ``row * n + column`` keys of the table (built on first use) instead of
        scipy's fancy indexing, which costs a slice per call."""
        table = self.neighbours
        if self._keys is None:
            rows_of = np.repeat(np.arange(table.shape[0], dtype=np.int64), np.diff(table.indptr))
            self._keys = rows_of * table.shape[1] + table.indices
        wanted = np.asarray(rows, dtype=np.int64) * table.shape[1] + np.asarray(columns)
        at, found = find_sorted(self._keys, wanted)
        values = np.zeros(wanted.shape, dtype=np.float32)
        values[found] = table.data[at[found]]
        return values

    @classmethod
    def fit(
        cls, interactions: sp.csr_matrix, k: int = 100, min_count: int = 1
    ) -> CooccurrenceRecommender:
        """From a user x book matrix (any positive value counts as read)."""
        binary = (interactions > 0).astype(np.float32).tocsr()
        co = (binary.T @ binary).tocsr()
        co.setdiag(0)
        co.eliminate_zeros()
        if min_count > 1:
            co.data[co.data < min_count] = 0
            co.eliminate_zeros()
        readers = np.sqrt(np.asarray(binary.sum(0)).ravel())
        inv = np.divide(1.0, readers, out=np.zeros_like(readers), where=readers > 0)
        sim = sp.diags(inv) @ co @ sp.diags(inv)
        return cls(top_neighbours(sp.csr_matrix(sim), k))

    @classmethod
    def from_prepared(
        cls, data: PreparedData, k: int = 100, min_count: int = 1
    ) -> CooccurrenceRecommender:
        return cls.fit(data.matrix("train"), k, min_count)

    def score(self, users: np.ndarray, history: sp.csr_matrix) -> np.ndarray:
        binary = (history > 0).astype(np.float32)
        return np.asarray((binary @ self.neighbours).toarray(), dtype=np.float32)

    def explain(self, history: list[int], book: int) -> list[tuple[int, float]]:
        """History books that point at ``book``, strongest first: (book index, similarity)."""
        column = self.neighbours[history, :][:, [book]].toarray().ravel()
        order = np.argsort(-column)
        return [(history[i], float(column[i])) for i in order if column[i] > 0]

    def save(self, path: str | Path) -> None:
        coo = self.neighbours.tocoo()
        pl.DataFrame(
            {"book_idx": coo.row, "neighbour_idx": coo.col, "similarity": coo.data}
        ).write_parquet(path)

    @classmethod
    def load(cls, path: str | Path, n_books: int) -> CooccurrenceRecommender:
        frame = pl.read_parquet(path)
        matrix = sp.csr_matrix(
            (
                frame.get_column("similarity").to_numpy(),
                (
                    frame.get_column("book_idx").to_numpy(),
                    frame.get_column("neighbour_idx").to_numpy(),
                ),
            ),
            shape=(n_books, n_books),
        )
        return cls(matrix)
