"""Matrix-factorisation source: fold-in equals ALS's own user solve; new users get vectors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from recsys.data.synthetic import SyntheticConfig, generate
from recsys.inference.mf import ANN, ANN_MIN_BOOKS, MatrixFactorisation


def _matrix(seed: int = 0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    dense = (rng.random((60, 40)) < 0.15).astype(np.float32)
    dense[:, :2] = 0  # reserved columns
    return sp.csr_matrix(dense)


def test_fold_in_matches_implicit_recalculate_user(tmp_path) -> None:
    from implicit.cpu.als import AlternatingLeastSquares

    train = _matrix()
    model = AlternatingLeastSquares(
        factors=8, regularization=0.5, alpha=10.0, iterations=5, random_state=0
    )
    model.fit(train, show_progress=False)
    mf = MatrixFactorisation(np.asarray(model.item_factors), 0.5, 10.0)
    lengths = np.diff(train.indptr)
    # both solves are covered: histories shorter than the 8 factors (Woodbury) and longer
    assert (lengths < 8).any()
    assert (lengths >= 8).any()
    users = np.arange(train.shape[0])
    theirs = np.asarray(model.recalculate_user(users, train))
    np.testing.assert_allclose(mf.user_vectors(train), theirs, rtol=1e-3, atol=1e-4)
    ours = mf.user_vectors(train[:5])
    # save/load keeps the vectors; an empty history gets the zero vector
    mf.save(tmp_path)
    again = MatrixFactorisation.load(tmp_path, n_books=40)
    np.testing.assert_allclose(again.user_vectors(train[:5]), ours, rtol=1e-6)
    assert not again.user_vectors(sp.csr_matrix((1, 40), dtype=np.float32)).any()


def test_new_user_vector_follows_history() -> None:
    """A user unseen in training, whose history is one taste cluster, is scored higher on
    that cluster's books than on others (fold-in needs no retraining)."""
    data = generate(SyntheticConfig(n_users=600, n_books=200, seed=3))
    matrix = sp.csr_matrix(
        (
            np.ones(data.interactions.height, dtype=np.float32),
            (
                data.interactions.get_column("user_id").str.slice(1).cast(int).to_numpy(),
                data.interactions.get_column("book_id").str.slice(1).cast(int).to_numpy() + 2,
            ),
        )
    )
    mf = MatrixFactorisation.fit(matrix, factors=16, regularization=1.0, alpha=20.0)
    genre = data.books.get_column("tags").list.first().to_numpy()  # planted genre
    books = data.books.get_column("book_id").str.slice(1).cast(int).to_numpy() + 2
    target = genre[0]
    in_genre = books[genre == target]
    history = sp.csr_matrix(
        (np.ones(8, dtype=np.float32), (np.zeros(8, dtype=int), in_genre[:8])),
        shape=(1, mf.n_books),
    )
    scores = mf.score(np.array([0]), history)[0]
    top = np.argsort(-scores)[:20]
    top_genre = {int(b): g for b, g in zip(books, genre, strict=True)}
    share = np.mean([top_genre.get(int(b)) == target for b in top])
    assert share >= 0.6, share


def test_top_books_exact_and_hnsw_agree_and_exclude() -> None:
    rng = np.random.default_rng(0)
    factors = rng.normal(size=(3000, 16)).astype(np.float32)
    factors[:2] = 0  # reserved rows
    exact = MatrixFactorisation(factors, 1.0, 10.0)
    approximate = exact.with_ann(m=32, ef_search=256)
    vectors = rng.normal(size=(5, 16)).astype(np.float32)
    scores = vectors @ factors.T
    excluded = [set(np.argsort(-scores[row])[:3].tolist()) for row in range(4)] + [set()]
    lists = [row[row >= 0].tolist() for row in exact.top_books(vectors, 50, excluded)]
    for row, books in enumerate(lists):
        expected = [int(b) for b in np.argsort(-scores[row]) if b >= 2 and b not in excluded[row]]
        assert books == expected[:50]
    # HNSW: the same exclusions, almost the same books; one query and a large batch
    for ann_lists in (
        approximate.top_books(vectors, 50, excluded),
        approximate.top_books(
            np.repeat(vectors, 20, axis=0), 50, [e for e in excluded for _ in range(20)]
        )[::20],
    ):
        for row, found in enumerate(ann_lists):
            books = found.tolist()
            assert len(books) == 50
            assert not set(books) & excluded[row]
            assert min(books) >= 2
            assert len(set(books) & set(lists[row])) >= 45
    assert exact.top_books(vectors, 0, excluded).shape == (5, 0)
    picked = np.array([[5, 7, 2999], [0, 1, 100], [9, 9, 9], [3, 4, 5], [6, 6, 6]])
    np.testing.assert_allclose(
        exact.scores_of(vectors, picked), np.take_along_axis(scores, picked, 1), rtol=1e-5
    )


def test_saved_hnsw_index_is_served_without_a_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From ``ANN_MIN_BOOKS`` books the index is saved with the factors and loading serves it
    (a hot swap builds nothing); a folder without it (older bundles) builds it at load."""
    rng = np.random.default_rng(0)
    factors = rng.normal(size=(ANN_MIN_BOOKS + 2, 4)).astype(np.float32)
    factors[:2] = 0
    built = MatrixFactorisation(factors, 1.0, 10.0).with_ann()
    built.save(tmp_path)
    assert (tmp_path / ANN / "books.faiss").is_file()
    vectors = rng.normal(size=(6, 4)).astype(np.float32)
    excluded: list[set[int]] = [{5, 9}, set(), set(), set(), set(), set()]
    expected = built.top_books(vectors, 20, excluded)

    def no_build(*_: object, **__: object) -> None:
        raise AssertionError("the saved index was not used")

    with monkeypatch.context() as patch:
        patch.setattr(MatrixFactorisation, "with_ann", no_build)
        loaded = MatrixFactorisation.load(tmp_path, ANN_MIN_BOOKS + 2)
        served = loaded.served(tmp_path)
    np.testing.assert_array_equal(served.top_books(vectors, 20, excluded), expected)
    assert loaded._ann is None
    assert served._ann is not None

    shutil.rmtree(tmp_path / ANN)  # a bundle written before the index was saved
    rebuilt = MatrixFactorisation.load(tmp_path, ANN_MIN_BOOKS + 2).served(tmp_path)
    assert rebuilt._ann is not None

    small = tmp_path / "small"
    small.mkdir()
    MatrixFactorisation(factors[:3000], 1.0, 10.0).save(small)
    assert not (small / ANN).exists()
    assert MatrixFactorisation.load(small, 3000).served(small)._ann is None
