from __future__ import annotations

from functools import partial

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp

from recsys.data.io import build_dataset
from recsys.data.prepared import PreparedData, prepare
from recsys.data.split import random_holdout
from recsys.evaluation import EvalSet, evaluate
from recsys.inference.base import ScoringRecommender
from recsys.inference.popularity import PopularityRecommender


def _interactions(rows: list[tuple[str, int, int]]) -> pl.DataFrame:
    return pl.DataFrame(
        rows, schema=["book_idx", "weight", "timestamp"], orient="row"
    ).with_columns(pl.col("weight").cast(pl.Float32), pl.col("book_idx").cast(pl.Int64))


def test_popularity_counts_and_deterministic_ties() -> None:
    inter = _interactions([(2, 1, 0), (3, 1, 0), (3, 1, 0), (4, 1, 0), (5, 1, 0)])
    pop = PopularityRecommender.fit(inter, n_books=7)
    assert pop.order.tolist() == [3, 2, 4, 5]  # ties by index; unread book 6 needs min_support=0
    everything = PopularityRecommender.fit(inter, n_books=7, min_support=0)
    assert everything.order.tolist() == [3, 2, 4, 5, 6]
    top, scores = pop.recommend(np.array([0]), sp.csr_matrix((1, 7)), k=3)
    assert top.tolist() == [[3, 2, 4]]
    assert scores.tolist() == [[2.0, 1.0, 1.0]]
    assert pop.top(2, exclude={3}) == [2, 4]


def test_popularity_time_decay_and_min_support() -> None:
    day = 86_400
    inter = _interactions([(2, 1, 0), (2, 1, 0), (3, 1, 10 * day)])
    decayed = PopularityRecommender.fit(inter, n_books=4, half_life_days=1.0)
    assert decayed.order[0] == 3  # one recent read beats two reads ten half-lives ago
    np.testing.assert_allclose(decayed.scores[2], 2 * 0.5**10)
    support = PopularityRecommender.fit(inter, n_books=4, min_support=2)
    assert support.order.tolist() == [2]
    assert np.isneginf(support.scores[3])


def test_popularity_save_load(tmp_path) -> None:
    pop = PopularityRecommender.fit(_interactions([(2, 1, 0), (3, 2, 0)]), n_books=5)
    pop.save(tmp_path / "p.parquet")
    again = PopularityRecommender.load(tmp_path / "p.parquet")
    assert again.order.tolist() == pop.order.tolist()


class Oracle(ScoringRecommender):
    """Scores exactly the held-out books highest: every metric must be perfect."""

    def __init__(self, val: sp.csr_matrix) -> None:
        self.val = val
        self.n_books = val.shape[1]

    def score(self, users: np.ndarray, history: sp.csr_matrix) -> np.ndarray:
        return self.val[users].toarray().astype(np.float32)


def _tiny() -> PreparedData:
    rows = [(f"u{u}", f"b{b}") for u in range(30) for b in range(u % 7, u % 7 + 10)]
    data = build_dataset("tiny", pl.DataFrame(rows, schema=["user_id", "book_id"], orient="row"))
    return prepare(data, partial(random_holdout, fraction=0.3, seed=0))


def test_oracle_is_perfect_and_seen_items_excluded() -> None:
    data = _tiny()
    eval_set = EvalSet.from_prepared(data)
    result = evaluate(Oracle(eval_set.val), eval_set, ks=(3,))
    assert result["recall@3"] == pytest.approx(1.0)
    assert result["ndcg@3"] == pytest.approx(1.0)
    assert result["hit_rate@3"] == 1.0
    assert result["users"] == 30


class SeenLover(ScoringRecommender):
    """Scores training items highest: the evaluator must mask them, so it can still hit."""

    def __init__(self, train: sp.csr_matrix, val: sp.csr_matrix) -> None:
        self.train, self.val = train, val
        self.n_books = train.shape[1]

    def score(self, users: np.ndarray, history: sp.csr_matrix) -> np.ndarray:
        return (10 * self.train[users] + self.val[users]).toarray().astype(np.float32)


def test_evaluator_excludes_training_items() -> None:
    data = _tiny()
    eval_set = EvalSet.from_prepared(data)
    result = evaluate(SeenLover(eval_set.train, eval_set.val), eval_set, ks=(3,))
    assert result["recall@3"] == pytest.approx(1.0)


def test_popularity_metrics_by_hand() -> None:
    # Two users; book b1 is most popular in train; u0 holds out b1, u1 holds out b3.
    rows = [("u0", "b0"), ("u0", "b1"), ("u1", "b1"), ("u1", "b2"), ("u2", "b1"), ("u1", "b3")]
    catalogue = pl.DataFrame({"book_id": ["b0", "b1", "b2", "b3"]})
    data = build_dataset(
        "h", pl.DataFrame(rows, schema=["user_id", "book_id"], orient="row"), books=catalogue
    )

    def split(frame: pl.DataFrame):
        from recsys.data.split import Split

        val_pairs = pl.DataFrame({"user_id": ["u0", "u1"], "book_id": ["b1", "b3"]})
        train = frame.join(val_pairs, on=["user_id", "book_id"], how="anti")
        val = frame.join(val_pairs, on=["user_id", "book_id"], how="semi")
        return Split(train, val, {"kind": "manual"})

    prepared = prepare(data, split)
    eval_set = EvalSet.from_prepared(prepared)
    pop = PopularityRecommender.from_prepared(prepared, min_support=0)
    result = evaluate(pop, eval_set, ks=(1, 2))
    # train counts: b1=2 (u1,u2), b0=1, b2=1, b3=0. u0 (seen b0) -> [b1, b2]: hit at rank 1.
    # u1 (seen b1, b2) -> [b0, b3]: hit at rank 2.
    assert result["recall@1"] == pytest.approx(0.5)
    assert result["recall@2"] == pytest.approx(1.0)
    assert result["mrr@2"] == pytest.approx((1 + 0.5) / 2)
    assert result["ndcg@2"] == pytest.approx((1 + 1 / np.log2(3)) / 2)
