"""Exact two-tower scoring over the whole catalogue (the FAISS index swaps in later)."""

from __future__ import annotations

import numpy as np
import polars as pl
import scipy.sparse as sp
import torch
from torch import nn

from recsys.errors import RecsysError
from recsys.features.pipeline import FeatureState, UserFeatures, pad_ragged, transform_users
from recsys.features.vocab import NUM_RESERVED
from recsys.index.faiss_index import FaissIndex
from recsys.inference.base import ScoringRecommender, top_k_excluding


class TwoTowerRecommender(ScoringRecommender):
    """Scores = user vector . book vector / temperature.

    Args:
        user_tower: the trained ``UserTower`` (or its TorchScript module).
        book_embeddings: ``[n_books, D]`` vectors indexed by book-vocab index.
        state: the feature state the towers were trained with.
        temperature: training temperature (scores are comparable to training logits).
        user_side: age/country per known user index (from the training data).
        index: FAISS index over the book vectors; ``recommend`` retrieves through it when set
            (``score`` always computes exact scores for every book).
    """

    def __init__(
        self,
        user_tower: nn.Module,
        book_embeddings: np.ndarray,
        state: FeatureState,
        temperature: float,
        user_side: dict[str, torch.Tensor],
        index: FaissIndex | None = None,
    ) -> None:
        self.user_tower = user_tower.eval()
        self.book_embeddings = np.ascontiguousarray(book_embeddings, dtype=np.float32)
        self.state = state
        self.temperature = temperature
        self.user_side = user_side
        self.n_books = self.book_embeddings.shape[0]
        self.base_books = self.n_books  # the user tower knows these; later ones were added
        self.index = index

    def add_books(self, vectors: np.ndarray) -> np.ndarray:
        """Make new books retrievable: their (book-tower) vectors get the next indices."""
        new = np.arange(self.n_books, self.n_books + len(vectors), dtype=np.int64)
        self.book_embeddings = np.ascontiguousarray(
            np.vstack([self.book_embeddings, vectors]), dtype=np.float32
        )
        self.n_books += len(vectors)
        if self.index is not None:
            self.index = self.index.with_added(vectors, new)
        return new

    @torch.no_grad()
    def encode(self, features: UserFeatures) -> np.ndarray:
        """User vectors ``[B, D]`` from encoded inputs."""
        out = self.user_tower(
            features["user"], features["history"], features["age"], features["country"]
        )
        return np.asarray(out.numpy(), dtype=np.float32)

    def features_from_matrix(self, users: np.ndarray, history: sp.csr_matrix) -> UserFeatures:
        """Encoded inputs for known user indices with histories given as CSR rows.

        Row values order a history: when it is longer than ``max_history`` the books with the
        largest values are kept (recency ranks from ``Bundle.history_matrix``: the most recent
        books; for interaction matrices with equal values, the highest book indices), oldest
        first.
        """
        # one sort for the batch: by row, then value, then book (no loop over rows)
        rows = np.repeat(np.arange(len(users), dtype=np.int64), np.diff(history.indptr))
        books, values = history.indices, history.data
        added = books >= self.base_books  # added books have no history embedding
        if added.any():
            rows, books, values = rows[~added], books[~added], values[~added]
        order = np.lexsort((books, values, rows))
        lengths = np.bincount(rows, minlength=len(users))
        padded = pad_ragged(books[order], lengths, self.state.config.max_history, "last")
        idx = torch.from_numpy(np.asarray(users, dtype=np.int64))
        known = idx < self.user_side["age"].numel()
        safe = torch.where(known, idx, torch.ones_like(idx))
        return UserFeatures(
            user=safe,
            history=torch.from_numpy(padded),
            age=torch.where(known, self.user_side["age"][safe], 0),
            country=torch.where(known, self.user_side["country"][safe], 0),
        )

    def encode_frame(self, users: pl.DataFrame) -> np.ndarray:
        """User vectors from raw rows (``user_id``, ``history`` book ids, optional side columns)
        through the same feature pipeline as training."""
        return self.encode(transform_users(users, self.state))

    def score_vectors(self, vectors: np.ndarray) -> np.ndarray:
        return (vectors @ self.book_embeddings.T) / self.temperature

    def score(self, users: np.ndarray, history: sp.csr_matrix) -> np.ndarray:
        return self.score_vectors(self.encode(self.features_from_matrix(users, history)))

    def recommend(
        self, users: np.ndarray, history: sp.csr_matrix, k: int, exclude_seen: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        if self.index is None:
            return super().recommend(users, history, k, exclude_seen)
        vectors = self.encode(self.features_from_matrix(users, history))
        excluded = [
            set(history.indices[history.indptr[i] : history.indptr[i + 1]].tolist())
            if exclude_seen
            else set()
            for i in range(len(users))
        ]
        return self.search(vectors, k, excluded)

    def search(
        self,
        vectors: np.ndarray,
        k: int,
        excluded: list[set[int]],
        allowed: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` books per query vector, skipping ``excluded`` books and, when ``allowed``
        (bool per book index) is given, books it rules out. Over-fetches from the index until
        ``k`` books survive or the index is exhausted; missing slots hold -1 / -inf.
        """
        if self.index is None:
            return top_k_excluding(self.score_vectors(vectors), k, excluded, allowed)
        top, sims = self.index.search_excluding(vectors, k, excluded, allowed)
        return top, sims / self.temperature

    def similar_books(
        self, book_ids: list[str], k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Nearest books by book-tower vector, excluding the query book itself.

        Raises:
            RecsysError: a book id is not in the model's vocabulary.
        """
        idx = [self.state.books.encode_one(b) for b in book_ids]
        unknown = [b for b, i in zip(book_ids, idx, strict=True) if i < NUM_RESERVED]
        if unknown:
            raise RecsysError(f"unknown book id(s) {unknown[:5]}: not in this model's catalogue.")
        vectors = self.book_embeddings[idx]
        return self.search(vectors, k, [{i} for i in idx], allowed)
