from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from recsys.data import split as S
from recsys.errors import DataError
from recsys.features.vocab import OOV, PAD, IdVocab


def test_vocab_reserves_padding_and_oov() -> None:
    vocab = IdVocab.fit(pl.Series(["b", "a", "b", "c"]))
    assert vocab.size == 5
    assert len(vocab) == 3
    np.testing.assert_array_equal(vocab.encode(pl.Series(["a", "c", "zzz"])), [2, 4, OOV])
    assert vocab.encode_one("b") == 3
    assert vocab.encode_one("nope") == OOV
    assert vocab.decode(np.array([PAD, OOV, 2, 4])) == [None, None, "a", "c"]
    assert "a" in vocab
    assert "q" not in vocab


def test_vocab_is_deterministic_and_round_trips(tmp_path: Path) -> None:
    a = IdVocab.fit(pl.Series(["3", "1", "2"]))
    b = IdVocab.fit(pl.Series(["2", "3", "1", "1"]))
    assert a == b
    assert a.checksum() == b.checksum()
    a.save(tmp_path / "v.parquet")
    loaded = IdVocab.load(tmp_path / "v.parquet")
    assert loaded == a
    np.testing.assert_array_equal(
        loaded.encode(pl.Series(["2", "x"])), a.encode(pl.Series(["2", "x"]))
    )


def test_vocab_rejects_gaps(tmp_path: Path) -> None:
    pl.DataFrame({"id": ["a", "b"], "index": [2, 5]}).write_parquet(tmp_path / "v.parquet")
    with pytest.raises(ValueError, match="not contiguous"):
        IdVocab.load(tmp_path / "v.parquet")


def _frame(n_users: int = 50, per_user: int = 10) -> pl.DataFrame:
    rows = [
        (f"u{u}", f"b{(u * 7 + i) % 90}", i * 10 + u)
        for u in range(n_users)
        for i in range(per_user)
    ]
    return pl.DataFrame(
        rows, schema=["user_id", "book_id", "timestamp"], orient="row"
    ).with_columns(pl.lit(1.0, pl.Float32).alias("weight"), pl.lit(None, pl.Int64).alias("order"))


def _pairs(frame: pl.DataFrame) -> set[tuple[str, str]]:
    return set(frame.select("user_id", "book_id").iter_rows())


def test_random_holdout_no_leak_fraction_and_determinism() -> None:
    inter = _frame()
    first = S.random_holdout(inter, fraction=0.2, seed=3)
    again = S.random_holdout(inter.sample(fraction=1.0, shuffle=True, seed=9), fraction=0.2, seed=3)
    assert _pairs(first.train).isdisjoint(_pairs(first.val))
    assert _pairs(first.train) | _pairs(first.val) == _pairs(inter)
    assert first.val.group_by("user_id").len().get_column("len").to_list() == [2] * 50
    assert _pairs(first.val) == _pairs(again.val)
    other = S.random_holdout(inter, fraction=0.2, seed=4)
    assert _pairs(other.val) != _pairs(first.val)


def test_random_holdout_keeps_min_train() -> None:
    inter = _frame(n_users=3, per_user=1)
    split = S.random_holdout(inter, fraction=0.5, seed=0)
    assert split.val.height == 0
    assert split.train.height == 3


def test_leave_last_n_by_timestamp() -> None:
    inter = _frame(n_users=4, per_user=5)
    split = S.leave_last_n(inter, n=2)
    latest = inter.sort("timestamp").group_by("user_id").tail(2)
    assert _pairs(split.val) == _pairs(latest)
    assert _pairs(split.train).isdisjoint(_pairs(split.val))


def test_leave_last_n_needs_time_or_order() -> None:
    inter = _frame().with_columns(pl.lit(None, pl.Int64).alias("timestamp"))
    with pytest.raises(DataError, match="needs a timestamp or order"):
        S.leave_last_n(inter)


def test_time_cutoff() -> None:
    inter = _frame(n_users=5, per_user=6)
    split = S.time_cutoff(inter, cutoff=30)
    assert split.val.get_column("timestamp").min() >= 30
    assert split.train.get_column("timestamp").max() < 30
    with pytest.raises(DataError, match="no training rows"):
        S.time_cutoff(inter, cutoff=-1)


def test_bad_fraction() -> None:
    with pytest.raises(DataError, match=r"fraction must be in \(0, 1\)"):
        S.random_holdout(_frame(), fraction=1.5)
    with pytest.raises(DataError, match=r"test_fraction must be in \[0, 1\)"):
        S.random_holdout(_frame(), test_fraction=-0.1)
    with pytest.raises(DataError, match="must be below 1"):
        S.random_holdout(_frame(), fraction=0.5, test_fraction=0.5)


def test_random_holdout_three_parts_partition_each_user() -> None:
    inter = _frame()
    split = S.random_holdout(inter, fraction=0.2, test_fraction=0.3, seed=3)
    parts = [_pairs(split.train), _pairs(split.val), _pairs(split.test)]
    assert sum(len(p) for p in parts) == inter.height
    assert parts[0] | parts[1] | parts[2] == _pairs(inter)
    assert split.test.group_by("user_id").len().get_column("len").to_list() == [3] * 50
    assert split.val.group_by("user_id").len().get_column("len").to_list() == [2] * 50
    assert split.spec["test_fraction"] == 0.3
    # the test carve does not move when only the validation share changes: a choice made
    # on validation can never be made on the rows reported
    wider = S.random_holdout(inter, fraction=0.1, test_fraction=0.3, seed=3)
    assert _pairs(wider.test) == parts[2]
    without = S.random_holdout(inter, fraction=0.2, seed=3)
    assert without.test.height == 0
    assert "test_fraction" not in without.spec


def test_three_parts_keep_min_train() -> None:
    inter = _frame(n_users=4, per_user=3)
    split = S.random_holdout(inter, fraction=0.4, test_fraction=0.4, seed=0, min_train=2)
    assert split.train.group_by("user_id").len().get_column("len").min() == 2
    assert split.test.height == 4
    assert split.val.height == 0


def test_leave_last_n_test_carve_is_the_latest() -> None:
    inter = _frame(n_users=4, per_user=5)
    split = S.leave_last_n(inter, n=2, test_n=1)
    ordered = inter.sort("timestamp")
    assert _pairs(split.test) == _pairs(ordered.group_by("user_id").tail(1))
    before = ordered.group_by("user_id").tail(3)
    assert _pairs(split.val) == _pairs(before) - _pairs(split.test)


def test_time_cutoff_test_carve() -> None:
    inter = _frame(n_users=5, per_user=6)
    split = S.time_cutoff(inter, cutoff=30, test_cutoff=50)
    assert split.test.get_column("timestamp").min() >= 50
    assert split.val.get_column("timestamp").max() < 50
    with pytest.raises(DataError, match="must be later"):
        S.time_cutoff(inter, cutoff=30, test_cutoff=30)
    assert S.without_test_carve({"cutoff": 30, "test_cutoff": 50}) == {"test_cutoff": None}


def test_encode_fast_path_matches_join_path() -> None:
    from recsys.features.vocab import SMALL

    vocab = IdVocab.fit(pl.Series([f"id{i}" for i in range(1000)]))
    ids = pl.Series([f"id{i}" for i in range(0, 2000, 3)] + [None, "nope"])
    long_path = vocab.encode(ids)  # > SMALL ids: polars join
    assert ids.len() > SMALL
    short_path = np.concatenate([vocab.encode(ids[i : i + 100]) for i in range(0, ids.len(), 100)])
    np.testing.assert_array_equal(short_path, long_path)
    assert long_path[-2:].tolist() == [OOV, OOV]
