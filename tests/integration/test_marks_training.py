"""Readers' "not for me" marks are negatives of the next training (issue #22).

Half the readers who would be recommended one of four popular books mark it; the same
retriever trained again with those marks (same seed) ranks the books lower for them, and,
collaborative filtering being what it is, for the similar readers who did not mark them.
"""

from __future__ import annotations

from dataclasses import replace

import lightning as L
import numpy as np
import polars as pl
import pytest
from tests.helpers.retriever import quick_retriever

from recsys.data import schema as S
from recsys.data.prepared import BOOK_IDX, USER_IDX, PreparedData
from recsys.features.pipeline import FeaturePipeline, FeatureState
from recsys.inference.two_tower import TwoTowerRecommender
from recsys.lightning.retrieval import marked_table

TOP = 10


@pytest.fixture(scope="module")
def state(prepared: PreparedData) -> FeatureState:
    return FeaturePipeline().fit(
        prepared.train, prepared.books, prepared.users, prepared.user_vocab, prepared.book_vocab
    )


def _trained(data: PreparedData, state: FeatureState) -> TwoTowerRecommender:
    L.seed_everything(3, workers=True)
    return quick_retriever(data, state, epochs=2)


def _unread_scores(model: TwoTowerRecommender, data: PreparedData, users: np.ndarray) -> np.ndarray:
    history = data.matrix("train")[users]
    scores = model.score(users, history)
    scores[history.toarray() > 0] = -np.inf
    scores[:, :2] = -np.inf  # padding and unknown
    return scores


def _ranks(model: TwoTowerRecommender, data: PreparedData, users: np.ndarray, books: np.ndarray):
    """Each (reader, book)'s rank among the reader's unread books (0 = first)."""
    scores = _unread_scores(model, data, users)
    mine = scores[np.arange(len(users)), books]
    return (scores > mine[:, None]).sum(1)


def test_marked_books_fall_in_the_ranking(prepared: PreparedData, state: FeatureState) -> None:
    plain = _trained(prepared, state)
    users = np.unique(prepared.train.get_column(USER_IDX).to_numpy())
    top = np.argsort(-_unread_scores(plain, prepared, users), axis=1)[:, :TOP]
    books = np.argsort(-np.bincount(top.ravel(), minlength=prepared.n_books))[:4]
    rng = np.random.default_rng(0)
    marked: list[tuple[int, int]] = []
    others: list[tuple[int, int]] = []
    for book in books:
        readers = rng.permutation(users[(top == book).any(1)])
        half = len(readers) // 2
        marked += [(int(u), int(book)) for u in readers[:half]]
        others += [(int(u), int(book)) for u in readers[half:]]
    mu, mb = (np.array(x) for x in zip(*marked, strict=True))
    ou, ob = (np.array(x) for x in zip(*others, strict=True))
    marks = pl.DataFrame({USER_IDX: mu, BOOK_IDX: mb}).with_columns(
        pl.Series(S.USER_ID, prepared.user_vocab.ids.gather(mu - 2)),
        pl.Series(S.BOOK_ID, prepared.book_vocab.ids.gather(mb - 2)),
    )
    table = marked_table(marks, prepared.n_users)
    assert set(table[mu[0]].tolist()) - {0} == set(mb[mu == mu[0]].tolist())

    before = _ranks(plain, prepared, mu, mb)
    assert (before < TOP).all()
    again = _ranks(_trained(prepared, state), prepared, mu, mb)
    np.testing.assert_array_equal(again, before)  # same seed, same model: the gap is the marks
    taught = _trained(replace(prepared, marks=marks), state)
    after = _ranks(taught, prepared, mu, mb)
    assert after.mean() > 2 * before.mean(), (before.mean(), after.mean())
    assert (after < TOP).mean() < 0.8
    assert (after > before).mean() > 0.5
    # the lesson generalises to similar readers who marked nothing
    assert _ranks(taught, prepared, ou, ob).mean() > 1.5 * _ranks(plain, prepared, ou, ob).mean()
