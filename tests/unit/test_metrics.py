from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp

from recsys.metrics import ranking as M


def test_hand_computed_metrics() -> None:
    # user 0: positives at ranks 1 and 3 of 4, 3 positives in total; user 1: no hit, 2 positives
    hits = np.array([[1, 0, 1, 0], [0, 0, 0, 0]], dtype=bool)
    n_pos = np.array([3, 2])
    np.testing.assert_allclose(M.recall_at_k(hits, n_pos, 4), [2 / 3, 0])
    np.testing.assert_allclose(M.precision_at_k(hits, 4), [0.5, 0])
    np.testing.assert_allclose(M.hit_rate_at_k(hits, 2), [1, 0])
    np.testing.assert_allclose(M.mrr_at_k(hits, 4), [1.0, 0])
    dcg = 1 / math.log2(2) + 1 / math.log2(4)
    idcg = 1 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
    np.testing.assert_allclose(M.ndcg_at_k(hits, n_pos, 4), [dcg / idcg, 0])
    # ideal DCG uses min(n_pos, K): one positive found at rank 1 with K=2 is perfect
    np.testing.assert_allclose(M.ndcg_at_k(np.array([[1, 0]], bool), np.array([5]), 1), [1.0])


def test_mrr_first_hit_rank() -> None:
    hits = np.array([[0, 0, 1, 1]], dtype=bool)
    np.testing.assert_allclose(M.mrr_at_k(hits, 4), [1 / 3])
    np.testing.assert_allclose(M.mrr_at_k(hits, 2), [0.0])


def test_hits_matrix() -> None:
    positives = sp.csr_matrix(np.array([[0, 1, 0, 1], [1, 0, 0, 0]]))
    top = np.array([[3, 2], [1, 0]])
    np.testing.assert_array_equal(M.hits_matrix(top, positives), [[True, False], [False, True]])


def test_self_information() -> None:
    np.testing.assert_allclose(
        M.self_information(np.array([50, 0, 100]), 100), [1.0, math.log2(100), 0.0]
    )


def test_list_similarity_matches_pairwise_cosine() -> None:
    rng = np.random.default_rng(0)
    feats = (rng.random((20, 6)) < 0.4).astype(float)
    feats[5] = 0.0  # a book with no attributes is left out of the pairs
    norms = np.linalg.norm(feats, axis=1, keepdims=True)
    normed = np.divide(feats, norms, out=np.zeros_like(feats), where=norms > 0)
    top = np.array([[0, 1, 2, 5], [3, 4, 6, 7]])
    got = M.list_similarity(top, sp.csr_matrix(normed))
    for row, items in enumerate(top):
        items = [i for i in items if norms[i] > 0]
        sims = [normed[a] @ normed[b] for a in items for b in items if a != b]
        np.testing.assert_allclose(got[row], np.mean(sims))
