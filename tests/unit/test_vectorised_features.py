"""The vectorised candidate-feature helpers equal their direct definitions."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from recsys.features.ranking import _match_share
from recsys.features.vocab import NUM_RESERVED
from recsys.inference.base import PADDING, row_dots
from recsys.inference.two_stage import _excluded_keys, _sparse_top, sparse_values


def test_sparse_values_equal_fancy_indexing() -> None:
    rng = np.random.default_rng(0)
    scores = sp.random(40, 300, density=0.05, format="csr", random_state=1, dtype=np.float32)
    scores = sp.csr_matrix((scores.data, scores.indices, scores.indptr), shape=scores.shape)
    scores.has_sorted_indices = False  # as a sparse product may leave them
    books = rng.integers(0, 300, size=(40, 25))
    books[:, 0] = scores.indices[scores.indptr[:-1].clip(max=scores.nnz - 1)]  # some hits
    rows = np.repeat(np.arange(40), 25)
    expected = np.asarray(scores[rows, books.ravel()]).reshape(40, 25)
    got = sparse_values(scores, books)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)
    assert (got != 0).any()
    empty = sp.csr_matrix((3, 300), dtype=np.float32)
    assert not sparse_values(empty, books[:3]).any()


def test_match_share_equals_the_pairwise_count() -> None:
    gen = torch.Generator().manual_seed(0)
    cand = torch.randint(0, 6, (7, 11), generator=gen)
    hist = torch.randint(0, 6, (7, 9), generator=gen)
    hist[:, 6:] = 0  # padding
    hist_len = (hist > 0).sum(1)
    same = (cand.unsqueeze(2) == hist.unsqueeze(1)) & (hist.unsqueeze(1) > 1)
    same &= cand.unsqueeze(2) > 1
    expected = same.sum(2).float() / hist_len.clamp(min=1).unsqueeze(1)
    got = _match_share(cand, hist, hist_len)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert got.max() > 0


def _top_by_definition(scores: sp.csr_matrix, n: int, excluded: list[set[int]]) -> np.ndarray:
    """Each row's top-``n`` stored entries, score descending, ties by book index."""
    out = np.full((scores.shape[0], n), PADDING, dtype=np.int64)
    for row in range(scores.shape[0]):
        part = scores.getrow(row).tocoo()
        entries = sorted(
            (-float(v), int(b))
            for b, v in zip(part.col, part.data, strict=True)
            if b >= NUM_RESERVED and b not in excluded[row]
        )
        books = [b for _, b in entries[:n]]
        out[row, : len(books)] = books
    return out


def test_sparse_top_orders_by_score_then_book_index() -> None:
    rng = np.random.default_rng(3)
    rows, cols = rng.integers(0, 30, 900), rng.integers(0, 200, 900)
    values = rng.choice(np.array([-1.5, -0.0, 0.0, 0.25, 0.5, 2.0, 7.0], np.float32), 900)
    scores = sp.coo_matrix((values, (rows, cols)), shape=(30, 200)).tocsr()  # duplicates summed
    order = rng.permutation(scores.nnz)  # stored out of book order, as a sparse product may be
    shuffled = sp.csr_matrix((scores.data, scores.indices, scores.indptr), shape=scores.shape)
    for r in range(30):
        lo, hi = shuffled.indptr[r], shuffled.indptr[r + 1]
        perm = order[(order >= lo) & (order < hi)]
        shuffled.indices[lo:hi], shuffled.data[lo:hi] = scores.indices[perm], scores.data[perm]
    shuffled.has_sorted_indices = False
    excluded = [set(rng.integers(0, 200, 5).tolist()) for _ in range(30)]
    keys = _excluded_keys(excluded, 200)
    for n in (1, 7, 50):
        np.testing.assert_array_equal(
            _sparse_top(shuffled, n, keys), _top_by_definition(scores, n, excluded)
        )


def test_row_dots_equal_the_gathered_products() -> None:
    rng = np.random.default_rng(4)
    table = rng.standard_normal((500, 16)).astype(np.float32)
    vectors = rng.standard_normal((70, 16)).astype(np.float32)  # more rows than one block
    books = rng.integers(0, 500, (70, 9))
    expected = np.einsum("bkd,bd->bk", table[books].astype(np.float64), vectors)
    got = row_dots(table, books, vectors)
    assert got.shape == (70, 9)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(row_dots(table, books[:1], vectors[:1]), got[:1])
