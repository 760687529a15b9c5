"""Shared types: the Recommender protocol every model implements."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import scipy.sparse as sp


@runtime_checkable
class Recommender(Protocol):
    """Scores users against the whole catalogue, in book-vocabulary index space.

    Column ``j`` of a score matrix is book-vocab index ``j``; columns 0 (padding) and 1 (OOV)
    are never recommended. ``history`` rows are the users' known interactions (user x book
    CSR over the same vocabularies); models that work from history (two-tower) use it, models
    that work from a user id (ALS) use ``users``, popularity ignores both.
    """

    n_books: int

    def score(self, users: np.ndarray, history: sp.csr_matrix) -> np.ndarray:
        """Scores ``[batch, n_books]`` (float32, higher is better)."""
        ...

    def recommend(
        self, users: np.ndarray, history: sp.csr_matrix, k: int, exclude_seen: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` book indices and their scores, each ``[batch, k]``, best first.

        When fewer than ``k`` books can be recommended, the remaining slots hold index -1
        and score -inf.
        """
        ...
