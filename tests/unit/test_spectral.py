from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recsys.models.spectral import TARGET_ROW_NORM, spectral_book_factors, spectral_init
from recsys.models.towers import BookTower, UserTower

N_BOOKS = 42  # index 0, 1 reserved; 2..21 cluster A, 22..41 cluster B


def _block_interactions(seed: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    """60 users: the first 30 read only cluster-A books, the rest only cluster-B books."""
    rng = np.random.default_rng(seed)
    users, books = [], []
    for user in range(2, 62):
        low = 2 if user < 32 else 22
        read = rng.choice(np.arange(low, low + 20), size=6, replace=False)
        users += [user] * len(read)
        books += read.tolist()
    return np.array(users), np.array(books), 62


def _factors(users: np.ndarray, books: np.ndarray, n_users: int, dim: int) -> np.ndarray:
    """Spectral factors of these reads (a user x book CSR matrix, as PreparedData.matrix)."""
    ones = np.ones(len(users), dtype=np.float32)
    matrix = sp.csr_matrix((ones, (users, books)), shape=(n_users, N_BOOKS))
    return spectral_book_factors(matrix, dim)


def _sizes() -> dict[str, int]:
    return {
        "num_users": 62,
        "num_books": N_BOOKS,
        "num_authors": 3,
        "num_publishers": 3,
        "num_languages": 3,
        "num_tags": 3,
        "num_countries": 3,
        "num_year_buckets": 3,
        "num_age_buckets": 3,
    }


def _cos(x: np.ndarray) -> np.ndarray:
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    return unit @ unit.T


def test_small_side_gram_paths_match_svd() -> None:
    """A side shorter than 2 x dim goes through its dense Gram matrix: the book side (42 books,
    dim 30) agrees with the sparse solver, the user side (9 users) with numpy's SVD."""
    # Skewed random reads: distinct singular values, so components are defined up to sign.
    rng = np.random.default_rng(3)
    weights = 1.0 / np.arange(1, N_BOOKS - 1)
    many = np.repeat(np.arange(2, 302), 5)
    read = np.concatenate(
        [
            rng.choice(np.arange(2, N_BOOKS), 5, replace=False, p=weights / weights.sum())
            for _ in range(300)
        ]
    )
    sparse = _factors(many, read, 302, 4)
    by_books = _factors(many, read, 302, 30)
    np.testing.assert_allclose(np.abs(by_books[:, :4]), np.abs(sparse), atol=1e-4)

    users, books, _ = _block_interactions()
    few_users, few_books = users[:40], books[:40]  # users 2..8
    by_users = _factors(few_users, few_books, 9, 6)
    matrix = np.zeros((9, N_BOOKS))
    matrix[few_users, few_books] = 1.0
    matrix /= np.sqrt(matrix.sum(0) + 1.0)
    _, values, vt = np.linalg.svd(matrix, full_matrices=False)
    expected = vt[:6].T * np.sqrt(values[:6])
    np.testing.assert_allclose(np.abs(by_users), np.abs(expected), atol=1e-4)


@pytest.mark.parametrize("dim", [4, 64])  # sparse solver (k < rank) and dense fallback
def test_factors_put_co_read_books_together(dim: int) -> None:
    users, books, n_users = _block_interactions()
    if dim == 64:  # 64 > min(shape) - 1 = 41: the dense path, columns past it zero
        factors = _factors(users, books, n_users, dim)
        assert factors.shape == (N_BOOKS, dim)
        assert np.abs(factors[:, 41:]).max() == 0.0
    else:  # tile to a matrix large enough for the sparse solver
        reps = 5
        users = np.concatenate([users + r * n_users for r in range(reps)])
        books = np.tile(books, reps)
        factors = _factors(users, books, n_users * reps, dim)
    assert np.abs(factors[:2]).max() == 0.0  # reserved rows never read
    sims = _cos(factors[2:])
    within = np.concatenate(
        [sims[:20, :20][np.triu_indices(20, 1)], sims[20:, 20:][np.triu_indices(20, 1)]]
    )
    across = sims[:20, 20:].ravel()
    # Full rank keeps each book's own direction too (within-cluster cosine small but positive);
    # the top components are the clusters.
    assert within.mean() > across.mean() + (0.05 if dim == 64 else 0.5)


def test_untrained_spectral_towers_retrieve_the_history_cluster() -> None:
    users, books, n_users = _block_interactions()
    factors = _factors(users, books, n_users, 8)
    torch.manual_seed(0)
    user_tower = UserTower(_sizes(), embedding_dim=8, hidden_dims=[], output_dim=8, pooling="mean")
    book_tower = BookTower(_sizes(), embedding_dim=8, hidden_dims=[], output_dim=8)
    spectral_init(user_tower, book_tower, factors)
    mean_norm = book_tower.book.weight[2:].norm(dim=1).mean().item()
    assert mean_norm == pytest.approx(TARGET_ROW_NORM, rel=1e-4)

    zeros = torch.zeros(N_BOOKS - 2, dtype=torch.long)
    book_vectors = book_tower(torch.arange(2, N_BOOKS), zeros, zeros, zeros, zeros, zeros[:, None])
    # A new user (never in the matrix) who read three cluster-B books.
    query = user_tower(
        torch.tensor([1]), torch.tensor([[22, 23, 24]]), torch.tensor([0]), torch.tensor([0])
    )
    scores = (query @ book_vectors.T).squeeze(0)
    top = torch.topk(scores, 10).indices + 2
    assert bool((top >= 22).all())


def test_unread_books_keep_random_rows_and_mlp_towers_keep_random_layers() -> None:
    users, books, n_users = _block_interactions()
    books = np.where(books == 41, 40, books)  # book 41 is never read
    factors = _factors(users, books, n_users, 8)
    torch.manual_seed(0)
    user_tower = UserTower(_sizes(), embedding_dim=8, hidden_dims=[16], output_dim=8)
    book_tower = BookTower(_sizes(), embedding_dim=8, hidden_dims=[16], output_dim=8)
    before_row = book_tower.book.weight[41].clone()
    before_mlp = [p.clone() for p in book_tower.mlp.parameters()]
    spectral_init(user_tower, book_tower, factors)
    torch.testing.assert_close(book_tower.book.weight[41], before_row)
    assert book_tower.book.weight[0].abs().max() == 0.0
    torch.testing.assert_close(user_tower.history.weight[2:41], book_tower.book.weight[2:41])
    for old, new in zip(before_mlp, book_tower.mlp.parameters(), strict=True):
        torch.testing.assert_close(old, new)


def test_shape_mismatch_is_refused() -> None:
    user_tower = UserTower(_sizes(), embedding_dim=8, hidden_dims=[], output_dim=8)
    book_tower = BookTower(_sizes(), embedding_dim=8, hidden_dims=[], output_dim=8)
    with pytest.raises(ValueError, match="factors have shape"):
        spectral_init(user_tower, book_tower, np.zeros((N_BOOKS, 4), dtype=np.float32))
