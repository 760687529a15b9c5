"""EASE: the closed form against its definition, pruning, and the saved weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from recsys.baselines.tuning import bracket_search
from recsys.errors import BundleError, DataError
from recsys.inference.ease import EaseRecommender, ease_weights, prune


def _interactions(seed: int = 0, users: int = 200, books: int = 30) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    dense = (rng.random((users, books)) < 0.15).astype(np.float32)
    dense[:, :2] = 0.0  # reserved columns, as in vocab index space
    dense[:, 29] = 0.0  # a book nobody read
    return sp.csr_matrix(dense)


def test_weights_solve_the_constrained_least_squares() -> None:
    """B minimises ||X - XB||² + λ||B||² subject to diag(B) = 0: its KKT conditions say
    (XᵀX + λI)B - XᵀX is zero off the diagonal."""
    x = _interactions()
    weights = ease_weights(x, l2=10.0).astype(np.float64)
    gram = (x.T @ x).toarray().astype(np.float64)
    read = np.asarray(x.sum(0)).ravel() > 0
    residual = ((gram + 10.0 * np.eye(30)) @ weights - gram)[np.ix_(read, read)]
    off_diagonal = residual[~np.eye(read.sum(), dtype=bool)]
    assert np.abs(off_diagonal).max() < 1e-3
    assert np.all(np.diag(weights) == 0.0)
    assert not weights[~read].any()
    assert not weights[:, ~read].any()


def test_planted_pairs_score_each_other() -> None:
    """Books 2 and 3 are always read together: reading one recommends the other first."""
    x = _interactions().tolil()
    for user in range(0, 200, 2):
        x[user, 2] = x[user, 3] = 1.0
    model = EaseRecommender.fit(x.tocsr(), l2=5.0)
    history = sp.csr_matrix(([1.0], ([0], [2])), shape=(1, 30))
    top, _ = model.recommend(np.array([0]), history, 1)
    assert top[0, 0] == 3
    assert model.explain([2, 5], 3)[0][0] == 2


def test_prune_keeps_each_rows_largest_positive_weights() -> None:
    weights = np.array([[0.0, 3.0, -1.0, 2.0], [1.0, 0.0, 0.5, 4.0], [-2.0, -1.0, 0.0, -3.0]])
    pruned = prune(weights.astype(np.float32), 2).toarray()
    assert pruned.tolist() == [[0, 3, 0, 2], [1, 0, 0, 4], [0, 0, 0, 0]]
    with pytest.raises(DataError, match="k >= 1"):
        prune(weights, 0)


def test_pruned_weights_round_trip_and_refuse_a_smaller_catalogue(tmp_path: Path) -> None:
    model = EaseRecommender.fit(_interactions(), l2=10.0, k=5)
    model.save(tmp_path / "ease")
    again = EaseRecommender.load(tmp_path / "ease", 30)
    history = _interactions(seed=1, users=8)
    assert np.array_equal(again.score(np.arange(8), history), model.score(np.arange(8), history))
    assert again.l2 == 10.0
    with pytest.raises(BundleError, match="beyond"):
        EaseRecommender.load(tmp_path / "ease", 10)
    with pytest.raises(ValueError, match="prune"):
        EaseRecommender.fit(_interactions(), l2=10.0).save(tmp_path / "dense")
    with pytest.raises(DataError, match="positive l2"):
        ease_weights(_interactions(), l2=0.0)


def test_bracket_search_finds_an_interior_optimum_and_flags_an_edge() -> None:
    calls: list[tuple[int, float]] = []

    def score(settings: dict[str, float]) -> float:
        calls.append((settings["a"], settings["b"]))
        return -((settings["a"] - 3) ** 2) - (settings["b"] - 10.0) ** 2

    search = bracket_search(
        score, {"a": [1, 2, 3, 4, 5], "b": [1.0, 5.0, 10.0]}, {"a": 1, "b": 1.0}
    )
    assert search.best == {"a": 3, "b": 10.0}
    assert search.unbracketed == ["b"]  # best b is the last value tried: widen the list
    assert len(calls) == len(set(calls)) == len(search.trials)
    budget = bracket_search(
        score, {"a": [1, 2, 3, 4, 5], "b": [1.0, 5.0, 10.0]}, {"a": 1, "b": 1.0}, max_trials=2
    )
    assert len(budget.trials) == 2
    assert budget.exhausted
    assert budget.unbracketed == ["a", "b"]  # neighbours left uncompared
    with pytest.raises(ValueError, match="not among"):
        bracket_search(score, {"a": [1, 2]}, {"a": 7})


def test_the_generator_takes_pruned_weights_only() -> None:
    from recsys.inference.two_stage import CandidateGenerator

    dense = EaseRecommender.fit(_interactions(), l2=10.0)
    with pytest.raises(ValueError, match="pruned"):
        CandidateGenerator(None, None, ease=dense, n_ease=5)  # type: ignore[arg-type]
    grown = dense.pruned(5).with_books(40)
    assert grown.n_books == 40
    assert grown.score(np.array([0]), sp.csr_matrix((1, 40)))[0].tolist() == [0.0] * 40


def test_a_catalogue_too_large_is_refused_with_the_fix() -> None:
    with pytest.raises(DataError, match=r"ranker\.ease\.enabled=false"):
        ease_weights(_interactions(), l2=10.0, max_books=20)


def test_top_books_fits_the_most_read_books_alone() -> None:
    """``top_books``: the weights among the most-read books are a full fit on those columns;
    every other book gets no weights; the pruned and dense forms agree."""
    x = _interactions().tolil()
    for user in range(0, 200, 3):
        x[user, 4] = 1.0  # books 4 and 5 read most
        x[user, 5] = 1.0
    x = x.tocsr()
    readers = np.asarray(x.sum(0)).ravel()
    chosen = np.sort(np.argsort(-readers, kind="stable")[:12])
    assert {4, 5} <= set(chosen.tolist())
    dense = EaseRecommender.fit(x, l2=10.0, top_books=12)
    expected = ease_weights(x[:, chosen], l2=10.0)
    np.testing.assert_allclose(dense.weights[np.ix_(chosen, chosen)], expected, atol=1e-6)
    others = np.setdiff1d(np.arange(30), chosen)
    assert not dense.weights[others].any()
    assert not dense.weights[:, others].any()
    pruned = EaseRecommender.fit(x, l2=10.0, k=4, top_books=12)
    assert pruned.sparse
    assert pruned.weights.shape == (30, 30)
    np.testing.assert_allclose(pruned.weights.toarray(), prune(dense.weights, 4).toarray())
    everything = EaseRecommender.fit(x, l2=10.0, top_books=30)  # not below the count: all
    np.testing.assert_allclose(everything.weights, ease_weights(x, l2=10.0))
    with pytest.raises(DataError, match="top_books must be at least 1"):
        EaseRecommender.fit(x, l2=10.0, top_books=0)


def test_top_books_lets_a_large_catalogue_use_ease() -> None:
    """A catalogue over ``max_books`` is refused whole but fits over its most-read books."""
    model = EaseRecommender.fit(_interactions(), l2=10.0, k=3, max_books=20, top_books=20)
    assert model.weights.shape == (30, 30)
    assert model.weights.nnz > 0
