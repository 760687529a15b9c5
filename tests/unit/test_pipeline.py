"""The one feature pipeline: parity between the table (training) and single-row (serving) paths."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
import pytest
import torch

from recsys.data.prepared import PreparedData
from recsys.features.pipeline import (
    FeatureConfig,
    FeaturePipeline,
    FeatureState,
    book_feature_table,
    pad_ragged,
    transform_books,
    transform_users,
    user_feature_table,
    user_histories,
)
from recsys.features.vocab import OOV


@pytest.fixture(scope="module")
def state(prepared: PreparedData) -> FeatureState:
    return FeaturePipeline(FeatureConfig(max_history=12)).fit(
        prepared.train, prepared.books, prepared.users, prepared.user_vocab, prepared.book_vocab
    )


def test_pad_ragged_keeps_most_recent_and_drops_oov() -> None:
    flat, lengths = np.array([5, 6, 7, 8, OOV, 3]), np.array([4, 2, 0])
    out = pad_ragged(flat, lengths, 3, "last")
    assert out.tolist() == [[6, 7, 8], [0, 0, 3], [0, 0, 0]]


def test_user_histories_oldest_first() -> None:
    frame = pl.DataFrame(
        {
            "user_id": ["a", "a", "a"],
            "book_id": ["x", "y", "z"],
            "timestamp": [30, 10, 20],
            "order": [None, None, None],
        },
        schema_overrides={"order": pl.Int64},
    )
    assert user_histories(frame).row(0) == ("a", ["y", "z", "x"])


def test_single_row_transform_equals_training_table(
    prepared: PreparedData, state: FeatureState
) -> None:
    histories = user_histories(prepared.train)
    table = user_feature_table(histories, prepared.users, state)
    rng = np.random.default_rng(0)
    for user_id in rng.choice(state.users.ids.to_list(), 20, replace=False):
        row = histories.filter(user_id=user_id).join(prepared.users, on="user_id", how="left")
        single = transform_users(row, state)
        idx = state.users.encode_one(user_id)
        for key in ("user", "history", "age", "country"):
            torch.testing.assert_close(single[key][0], table[key][idx])


def test_book_table_rows_match_single_books(prepared: PreparedData, state: FeatureState) -> None:
    table = book_feature_table(prepared.books, state)
    assert table["book"][:2].tolist() == [0, 1]
    for book_id in ["b3", "b77", "b250"]:
        single = transform_books(prepared.books.filter(book_id=book_id), state)
        idx = state.books.encode_one(book_id)
        for key in single:
            torch.testing.assert_close(single[key][0], table[key][idx])  # type: ignore[literal-required]
    assert (table["author"][2:] > 1).all()  # synthetic books all have known authors
    assert (table["tags"][2:, 0] > 1).all()


def test_new_user_and_unknown_books(state: FeatureState) -> None:
    frame = pl.DataFrame({"user_id": ["never-seen"], "history": [["b1", "nope", "b2"]]})
    out = transform_users(frame, state)
    assert out["user"].tolist() == [OOV]
    row = out["history"][0].tolist()
    assert row[-2:] == [state.books.encode_one("b1"), state.books.encode_one("b2")]
    assert out["age"].tolist() == [0]


def test_state_round_trip(state: FeatureState, tmp_path: Path) -> None:
    state.save(tmp_path)
    again = FeatureState.load(tmp_path)
    assert again.config == state.config
    assert again.sizes() == state.sizes()
    assert again.books == state.books


def _padded_by_loop(rows: list[list[int]], width: int, keep: str) -> np.ndarray:
    """The row-by-row padding that ``pad_ragged`` replaced (the reference)."""
    out = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        kept = [t for t in row if t > OOV]
        kept = kept[-width:] if keep == "last" and width else kept[:width]
        if kept:
            if keep == "last":
                out[i, width - len(kept) :] = kept
            else:
                out[i, : len(kept)] = kept
    return out


@pytest.mark.parametrize("keep", ["first", "last"])
def test_pad_ragged_equals_the_row_loop(keep: Literal["first", "last"]) -> None:
    rng = np.random.default_rng(0)
    rows = [rng.integers(0, 9, rng.integers(0, 12)).tolist() for _ in range(300)]
    rows += [[], [OOV, 0], [5] * 20]
    lengths = np.array([len(r) for r in rows])
    flat = np.array([t for r in rows for t in r], dtype=np.int64)
    for width in (0, 1, 4, 12):
        expected = _padded_by_loop(rows, width, keep)
        assert np.array_equal(pad_ragged(flat, lengths, width, keep), expected), width
    assert pad_ragged(np.zeros(0, np.int64), np.zeros(0, np.int64), 3, keep).shape == (0, 3)
