"""Train/validation/test splits that never leak: each (user, book) pair lands in exactly one part.

Three parts: ``train`` (what models learn from), ``val`` (every choice: epochs, settings,
sweeps) and ``test`` (the test carve: reported only, never used for a choice; empty when the
split asks for none). All splits are deterministic: rows are put in a canonical order first,
and random choices come from a seeded generator.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from recsys.data import schema as S
from recsys.errors import DataError

TRAIN, VAL, TEST = "train", "val", "test"


@dataclass(frozen=True)
class Split:
    """Interactions divided into training, validation (selection) and test (report) parts."""

    train: pl.DataFrame
    val: pl.DataFrame
    spec: dict[str, object]
    test: pl.DataFrame | None = None

    def __post_init__(self) -> None:
        if self.test is None:
            object.__setattr__(self, "test", self.val.clear())


def _canonical(inter: pl.DataFrame) -> pl.DataFrame:
    return inter.sort([S.USER_ID, S.BOOK_ID])


def _finish(inter: pl.DataFrame, part: pl.Expr, spec: dict[str, object]) -> Split:
    """``part``: each row's part (TRAIN, VAL or TEST)."""
    marked = inter.with_columns(part.alias("_part"))
    train, val, test = (
        marked.filter(pl.col("_part") == name).drop("_part") for name in (TRAIN, VAL, TEST)
    )
    if train.height == 0:
        raise DataError(f"split {spec} left no training rows; lower the holdout or cutoff.")
    return Split(train, val, spec, test)


def _check_fraction(name: str, value: float, low_open: bool = True) -> None:
    if not (0.0 < value < 1.0 if low_open else 0.0 <= value < 1.0):
        interval = "(0, 1)" if low_open else "[0, 1)"
        raise DataError(f"split.{name} must be in {interval}, got {value}.")


def random_holdout(
    interactions: pl.DataFrame,
    fraction: float = 0.2,
    seed: int = 0,
    min_train: int = 1,
    test_fraction: float = 0.0,
) -> Split:
    """Hold out ``round(test_fraction * n)`` random items of each user as the test carve and
    ``round(fraction * n)`` more as validation (seeded).

    Users keep at least ``min_train`` training items (the test carve gives way first, then
    validation); a user with ``n <= min_train`` items is all-train.
    """
    _check_fraction("fraction", fraction)
    _check_fraction("test_fraction", test_fraction, low_open=False)
    if fraction + test_fraction >= 1.0:
        raise DataError(
            f"split.fraction + split.test_fraction must be below 1 (training needs rows), "
            f"got {fraction} + {test_fraction}."
        )
    inter = _canonical(interactions)
    rng = np.random.default_rng(seed)
    inter = inter.with_columns(_r=pl.Series(rng.random(inter.height)))
    n = pl.len().over(S.USER_ID)
    n_test = pl.min_horizontal((n.cast(pl.Float64) * test_fraction).round(0), n - min_train)
    n_val = pl.min_horizontal((n.cast(pl.Float64) * fraction).round(0), n - min_train - n_test)
    rank = pl.col("_r").rank("ordinal").over(S.USER_ID)
    part = (
        pl.when(rank <= n_test)
        .then(pl.lit(TEST))
        .when(rank <= n_test + n_val)
        .then(pl.lit(VAL))
        .otherwise(pl.lit(TRAIN))
    )
    spec: dict[str, object] = {
        "kind": "random_holdout",
        "fraction": fraction,
        "seed": seed,
        "min_train": min_train,
    }
    if test_fraction:
        spec["test_fraction"] = test_fraction  # specs without a test carve keep their old form
    split = _finish(inter, part, spec)
    assert split.test is not None
    return Split(split.train.drop("_r"), split.val.drop("_r"), split.spec, split.test.drop("_r"))


def leave_last_n(
    interactions: pl.DataFrame, n: int = 1, min_train: int = 1, test_n: int = 0
) -> Split:
    """Hold out each user's last ``test_n`` interactions as the test carve and the ``n``
    before them as validation, by timestamp (or by ``order`` without one)."""
    if n < 1:
        raise DataError(f"split.n must be >= 1, got {n}.")
    if test_n < 0:
        raise DataError(f"split.test_n must be >= 0, got {test_n}.")
    inter = _canonical(interactions)
    if inter.get_column(S.TIMESTAMP).null_count() == 0:
        key = S.TIMESTAMP
    elif inter.get_column(S.ORDER).null_count() == 0:
        key = S.ORDER
    else:
        raise DataError(
            "leave_last_n needs a timestamp or order for every interaction; "
            "use split=random_holdout for data without them."
        )
    inter = inter.sort([S.USER_ID, key, S.BOOK_ID])
    count = pl.len().over(S.USER_ID)
    from_end = count - pl.int_range(pl.len()).over(S.USER_ID)  # 1 = the last interaction
    kept = count - from_end >= min_train  # rows that leave min_train before them
    part = (
        pl.when((from_end <= test_n) & kept)
        .then(pl.lit(TEST))
        .when((from_end <= test_n + n) & kept)
        .then(pl.lit(VAL))
        .otherwise(pl.lit(TRAIN))
    )
    spec: dict[str, object] = {"kind": "leave_last_n", "n": n, "key": key, "min_train": min_train}
    if test_n:
        spec["test_n"] = test_n
    return _finish(inter, part, spec)


def time_cutoff(interactions: pl.DataFrame, cutoff: int, test_cutoff: int | None = None) -> Split:
    """Global temporal split: interactions at or after ``cutoff`` (unix seconds) are
    validation, and those at or after ``test_cutoff`` (later than ``cutoff``) the test carve.

    Users who appear only after the cutoff are kept in validation/test as cold-start users.
    """
    inter = _canonical(interactions)
    if inter.get_column(S.TIMESTAMP).null_count():
        raise DataError(
            "time_cutoff needs a timestamp on every interaction; "
            "use split=random_holdout or leave_last_n instead."
        )
    if test_cutoff is not None and test_cutoff <= cutoff:
        raise DataError(
            f"split.test_cutoff ({test_cutoff}) must be later than split.cutoff ({cutoff})."
        )
    time = pl.col(S.TIMESTAMP)
    spec: dict[str, object] = {"kind": "time_cutoff", "cutoff": cutoff}
    is_test = pl.lit(False)
    if test_cutoff is not None:
        spec["test_cutoff"] = test_cutoff
        is_test = time >= test_cutoff
    part = (
        pl.when(time < cutoff)
        .then(pl.lit(TRAIN))
        .when(is_test)
        .then(pl.lit(TEST))
        .otherwise(pl.lit(VAL))
    )
    return _finish(inter, part, spec)


# the setting of each split that asks for a test carve, and its value for none
NO_TEST_CARVE = {"test_fraction": 0.0, "test_n": 0, "test_cutoff": None}


def without_test_carve(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Overrides that turn a split's test carve off (a job with its own holdout, such as the
    retrain, keeps those rows for training)."""
    return {key: value for key, value in NO_TEST_CARVE.items() if key in settings}


FIT_CARVE, FIT_ALL = "carve", "all"  # the `fit` setting: learn from the training part, or all


def fit_mode(value: str | None) -> str:
    """The ``fit`` setting: ``carve`` (learn from the training part, choose on validation,
    report the test carve; the default) or ``all`` (a bundle meant to serve: every
    interaction, for the epochs chosen beforehand)."""
    mode = str(value or FIT_CARVE)
    if mode not in (FIT_CARVE, FIT_ALL):
        raise DataError(
            f"fit={mode} is not a fit; use fit=carve (evaluate on the carve) or fit=all "
            "(a bundle meant to serve, fit on every interaction)."
        )
    return mode


def fitting_all(split_fn: Callable[[pl.DataFrame], Split]) -> Callable[[pl.DataFrame], Split]:
    """``split_fn`` for a bundle meant to serve (``fit=all``): every part's rows go to
    training and nothing is held out; the spec still names the carve the settings were
    chosen on, with ``fit: all``."""

    def split_all(interactions: pl.DataFrame) -> Split:
        split = split_fn(interactions)
        parts = [split.train, split.val] + ([split.test] if split.test is not None else [])
        everything = _canonical(pl.concat(parts, how="diagonal_relaxed"))
        return Split(everything, split.val.clear(), {**split.spec, "fit": FIT_ALL})

    return split_all
