"""Vectorised top-K metrics as in the LightGCN/KGAT papers (binary relevance).

All functions take ``hits``: bool ``[batch, K]`` (is the item at rank r a held-out positive)
and ``n_pos``: int ``[batch]`` (number of held-out positives of each user), and return
per-user values ``[batch]`` so callers can average over any set of users.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def _discounts(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, k + 2))


def recall_at_k(hits: np.ndarray, n_pos: np.ndarray, k: int) -> np.ndarray:
    """Share of a user's positives found in the top ``k``."""
    return np.asarray(hits[:, :k].sum(1) / np.maximum(n_pos, 1))


def precision_at_k(hits: np.ndarray, k: int) -> np.ndarray:
    return hits[:, :k].sum(1) / k


def hit_rate_at_k(hits: np.ndarray, k: int) -> np.ndarray:
    return np.asarray(hits[:, :k].any(1), dtype=np.float64)


def ndcg_at_k(hits: np.ndarray, n_pos: np.ndarray, k: int) -> np.ndarray:
    """DCG of the top ``k`` over the ideal DCG of ``min(n_pos, k)`` positives at the top."""
    disc = _discounts(k)
    dcg = (hits[:, :k] * disc).sum(1)
    ideal = np.concatenate([[0.0], np.cumsum(disc)])[np.minimum(n_pos, k)]
    return np.divide(dcg, ideal, out=np.zeros_like(dcg), where=ideal > 0)


def mrr_at_k(hits: np.ndarray, k: int) -> np.ndarray:
    """Reciprocal rank of the first positive within the top ``k`` (0 when none)."""
    h = hits[:, :k]
    first = h.argmax(1)
    return np.where(h.any(1), 1.0 / (first + 1), 0.0)


def hits_matrix(top: np.ndarray, positives: sp.csr_matrix) -> np.ndarray:
    """bool ``[batch, K]``: whether ``top[u, r]`` is in row ``u`` of ``positives``."""
    dense = positives.toarray() > 0
    return np.take_along_axis(dense, top, axis=1)


def self_information(counts: np.ndarray, n_users: int) -> np.ndarray:
    """``-log2(p(i))`` with ``p(i)`` the share of users who read book ``i`` (min count 1)."""
    return -np.log2(np.maximum(counts, 1) / max(n_users, 1))


def list_similarity(top: np.ndarray, features: sp.csr_matrix) -> np.ndarray:
    """Mean pairwise cosine similarity of each list's books, ``[batch]`` (NaN if < 2 described).

    ``features`` is a book x attribute matrix with L2-normalised rows (e.g. authors and tags).
    Uses ``sum_{i != j} f_i.f_j = |sum_i f_i|^2 - sum_i |f_i|^2``, so it costs O(K) per list.
    """
    batch, k = top.shape
    rows = np.repeat(np.arange(batch), k)
    member = sp.csr_matrix(
        (np.ones(batch * k), (rows, top.ravel())), shape=(batch, features.shape[0])
    )
    summed = member @ features
    sq = np.asarray(summed.multiply(summed).sum(1)).ravel()
    described = np.asarray(member @ (features.getnnz(axis=1) > 0).astype(np.float64)).ravel()
    pairs = described * (described - 1)
    return np.divide(sq - described, pairs, out=np.full(batch, np.nan), where=pairs > 0)
