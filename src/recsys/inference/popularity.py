"""Popularity: the baseline every model must beat and the serving fallback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import scipy.sparse as sp

from recsys.data import schema as S
from recsys.data.prepared import BOOK_IDX, PreparedData
from recsys.features.vocab import NUM_RESERVED
from recsys.inference.base import PADDING, ScoringRecommender


class PopularityRecommender(ScoringRecommender):
    """Books ordered by (optionally time-decayed) interaction weight, ties broken by book index.

    Scores are the decayed counts; books under ``min_support`` raw interactions are never
    recommended. The full ranking is precomputed, so a single request costs a short scan of
    it (microseconds).

    Args:
        scores: popularity per book-vocab index ``[n_books]``; ``-inf`` for books never to show.
    """

    def __init__(self, scores: np.ndarray) -> None:
        self.scores = np.array(scores, dtype=np.float64)
        self.scores[:NUM_RESERVED] = -np.inf
        self.n_books = self.scores.size
        # Deterministic order: score descending, then book index ascending.
        self.order = np.lexsort((np.arange(self.n_books), -self.scores))
        self.order = self.order[np.isfinite(self.scores[self.order])]
        # Strictly decreasing surrogate used for matrix scoring so top-K ties are deterministic.
        self._rank_score = np.full(self.n_books, -np.inf, dtype=np.float32)
        self._rank_score[self.order] = np.arange(self.order.size, 0, -1, dtype=np.float32)

    @classmethod
    def fit(
        cls,
        interactions: pl.DataFrame,
        n_books: int,
        half_life_days: float | None = None,
        min_support: int = 1,
        now: int | None = None,
    ) -> PopularityRecommender:
        """Fit from interactions with a ``book_idx`` column.

        Args:
            interactions: training interactions (canonical schema + ``book_idx``).
            n_books: book vocabulary size.
            half_life_days: if set and timestamps exist, an interaction ``t`` seconds before
                ``now`` counts ``0.5 ** (t / half_life)``.
            min_support: books with fewer raw interactions are excluded.
            now: reference time for decay (default: the latest timestamp).
        """
        weight = pl.col(S.WEIGHT).cast(pl.Float64)
        has_ts = interactions.get_column(S.TIMESTAMP).null_count() < interactions.height
        if half_life_days and has_ts:
            ref = now if now is not None else interactions.get_column(S.TIMESTAMP).max()
            age = (pl.lit(ref) - pl.col(S.TIMESTAMP).fill_null(ref)).clip(lower_bound=0)
            weight = weight * (0.5 ** (age.cast(pl.Float64) / (half_life_days * 86_400.0)))
        agg = interactions.group_by(BOOK_IDX).agg(weight.sum().alias("s"), pl.len().alias("n"))
        scores = np.zeros(n_books)
        support = np.zeros(n_books, dtype=np.int64)
        idx = agg.get_column(BOOK_IDX).to_numpy()
        scores[idx] = agg.get_column("s").to_numpy()
        support[idx] = agg.get_column("n").to_numpy()
        scores[support < min_support] = -np.inf
        return cls(scores)

    @classmethod
    def from_prepared(
        cls, data: PreparedData, half_life_days: float | None = None, min_support: int = 1
    ) -> PopularityRecommender:
        """Fit on a prepared dataset's training split."""
        return cls.fit(data.train, data.n_books, half_life_days, min_support)

    def score(self, users: np.ndarray, history: sp.csr_matrix) -> np.ndarray:
        return np.broadcast_to(self._rank_score, (len(users), self.n_books))

    def top(self, k: int, exclude: set[int] | frozenset[int] = frozenset()) -> list[int]:
        """The ``k`` most popular book indices not in ``exclude`` (single-request fast path)."""
        out: list[int] = []
        for book in self.order:
            if book not in exclude:
                out.append(int(book))
                if len(out) == k:
                    break
        return out

    def recommend(
        self, users: np.ndarray, history: sp.csr_matrix, k: int, exclude_seen: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        rows = []
        for u in range(len(users)):
            seen = set(history.indices[history.indptr[u] : history.indptr[u + 1]].tolist())
            rows.append(self.top(k, seen if exclude_seen else frozenset()))
        top = np.full((len(rows), k), PADDING, dtype=np.int64)
        for u, row in enumerate(rows):
            top[u, : len(row)] = row
        scores = np.where(top >= 0, self.scores[np.maximum(top, 0)], -np.inf)
        return top, scores.astype(np.float32)

    def to_frame(self) -> pl.DataFrame:
        """``(book_idx, score, rank)`` of recommendable books, best first."""
        return pl.DataFrame(
            {
                BOOK_IDX: self.order,
                "score": self.scores[self.order],
                "rank": np.arange(self.order.size),
            }
        )

    def save(self, path: str | Path) -> None:
        pl.DataFrame({BOOK_IDX: np.arange(self.n_books), "score": self.scores}).write_parquet(path)

    @classmethod
    def load(cls, path: str | Path) -> PopularityRecommender:
        frame = pl.read_parquet(path).sort(BOOK_IDX)
        return cls(frame.get_column("score").to_numpy())
