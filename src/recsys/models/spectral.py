"""Spectral initialisation of the two towers' book tables.

Random id embeddings start every book in a random direction and the sampled softmax has to pull
each one, mostly rare ones seen a handful of times, into place; with Adam their few updates
overfit before the structure shared by co-read books is learnt. Starting both book tables
(the book tower's id table and the user tower's history table) from the top right singular
vectors of the binary user x book training matrix puts co-read books next to each other from
step 0: with identity output layers the untrained towers already score like PureSVD (cosine),
and training refines that instead of discovering it. On Amazon-Book this is worth more than any
other single setting (see the retrieval benchmark's "random init" ablation row).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.linalg import svds
from torch import nn

TARGET_ROW_NORM = 0.4  # mean row norm of the default N(0, 0.05^2) init at 64 dims


def spectral_book_factors(
    interactions: sp.spmatrix,
    dim: int,
    popularity_power: float = 0.5,
    singular_power: float = 0.5,
    seed: int = 0,
) -> np.ndarray:
    """``[n_books, dim]`` from the user x book ``interactions`` (e.g.
    ``PreparedData.matrix(binary=True)``; any non-zero counts as one read): right singular
    vectors of that binary matrix with columns divided by ``(readers + 1) ** popularity_power``
    (0.5: cosine-like, so the top components are not just the bestsellers), each component
    scaled by ``singular_value ** singular_power``. Rows of unread books are zero; when ``dim``
    exceeds the matrix rank the extra columns are zero.
    """
    matrix = sp.csr_matrix(interactions, dtype=np.float32, copy=True)
    matrix.data[:] = 1.0
    readers = np.diff(matrix.tocsc().indptr)
    if popularity_power:
        weights = np.power(readers + 1.0, -popularity_power).astype(np.float32)
        matrix = (matrix @ sp.diags(weights)).tocsr()
    n_users, n_books = matrix.shape
    rank = min(dim, min(n_users, n_books) - 1)
    factors = np.zeros((n_books, dim), dtype=np.float32)
    if rank < 1 or matrix.nnz == 0:
        return factors
    if min(n_users, n_books) <= 2 * dim:
        # One short side: eigen-decompose its dense Gram matrix (exact; the long side, e.g.
        # millions of users x 100 books, is never densified).
        books_short = n_books <= n_users
        gram = (matrix.T @ matrix if books_short else matrix @ matrix.T).toarray()
        eigvals, eigvecs = np.linalg.eigh(gram.astype(np.float64))
        top = np.argsort(-eigvals)[:rank]
        values = np.sqrt(np.maximum(eigvals[top], 0.0))
        if books_short:
            vt = eigvecs[:, top].T
        else:  # V = X^T U / S
            vt = (matrix.T @ eigvecs[:, top]).T / np.where(values > 1e-9, values, 1.0)[:, None]
    else:
        v0 = np.random.default_rng(seed).standard_normal(min(n_users, n_books))
        _, values, vt = svds(matrix, k=rank, v0=v0.astype(np.float32))
        order = np.argsort(-values)
        values, vt = values[order], vt[order]
    factors[:, :rank] = vt.T * np.power(np.maximum(values, 0.0), singular_power)
    factors[readers == 0] = 0.0  # unread books: solver noise only
    return factors


def _fill(table: nn.Embedding, factors: np.ndarray) -> None:
    """Copy non-zero factor rows into ``table`` at :data:`TARGET_ROW_NORM` mean norm; books
    without training interactions keep their random rows."""
    norms = np.linalg.norm(factors, axis=1)
    present = norms > 0
    if not present.any():
        return
    scaled = factors * (TARGET_ROW_NORM / norms[present].mean())
    rows = torch.from_numpy(np.flatnonzero(present))
    with torch.no_grad():
        table.weight[rows] = torch.from_numpy(scaled[present]).to(table.weight.dtype)
        if table.padding_idx is not None:
            table.weight[table.padding_idx].zero_()


def _identity_output(mlp: nn.Module, dim: int) -> None:
    """A tower whose MLP is one ``Linear`` to ``dim`` outputs passes its first ``dim`` inputs
    (the id / mean-of-history block) through unchanged; MLP towers keep their random layers."""
    layers = [m for m in mlp.modules() if isinstance(m, nn.Linear)]
    if len(layers) != 1 or layers[0].out_features != dim or layers[0].in_features < dim:
        return
    with torch.no_grad():
        layers[0].weight.zero_()
        layers[0].weight[:, :dim] = torch.eye(dim)
        layers[0].bias.zero_()


def spectral_init(user_tower: nn.Module, book_tower: nn.Module, factors: np.ndarray) -> None:
    """Initialise both towers' book tables from ``factors`` (see :func:`spectral_book_factors`),
    and linear towers' output layers to pass the book / mean-history block through."""
    book_table: nn.Embedding = book_tower.book  # type: ignore[assignment]
    history_table: nn.Embedding = user_tower.history  # type: ignore[assignment]
    dim = book_table.embedding_dim
    if factors.shape != (book_table.num_embeddings, dim):
        raise ValueError(
            f"factors have shape {factors.shape}, the book table {tuple(book_table.weight.shape)}"
        )
    _fill(book_table, factors)
    if history_table.weight is not book_table.weight:
        _fill(history_table, factors)
    _identity_output(book_tower.mlp, dim)  # type: ignore[arg-type]
    if getattr(user_tower, "use_mean", False):
        _identity_output(user_tower.mlp, dim)  # type: ignore[arg-type]
