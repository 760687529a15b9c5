"""The vectorised candidate-feature helpers equal their direct definitions."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from recsys.features.ranking import _match_share
from recsys.inference.two_stage import sparse_values


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
