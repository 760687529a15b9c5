"""Train/validation splits that never leak: each (user, book) pair lands in exactly one side.

All splits are deterministic: rows are put in a canonical order first, and random choices come
from a seeded generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from recsys.data import schema as S
from recsys.errors import DataError


@dataclass(frozen=True)
class Split:
    """Interactions divided into a training part and a held-out validation part."""

    train: pl.DataFrame
    val: pl.DataFrame
    spec: dict[str, object]


def _canonical(inter: pl.DataFrame) -> pl.DataFrame:
    return inter.sort([S.USER_ID, S.BOOK_ID])


def _finish(inter: pl.DataFrame, is_val: pl.Expr, spec: dict[str, object]) -> Split:
    marked = inter.with_columns(is_val.alias("_val"))
    train = marked.filter(~pl.col("_val")).drop("_val")
    val = marked.filter(pl.col("_val")).drop("_val")
    if train.height == 0:
        raise DataError(f"split {spec} left no training rows; lower the holdout or cutoff.")
    return Split(train, val, spec)


def random_holdout(
    interactions: pl.DataFrame, fraction: float = 0.2, seed: int = 0, min_train: int = 1
) -> Split:
    """Hold out ``round(fraction * n)`` random items of each user (seeded).

    Users keep at least ``min_train`` training items; a user with ``n <= min_train`` items
    is all-train.
    """
    if not 0.0 < fraction < 1.0:
        raise DataError(f"split.fraction must be in (0, 1), got {fraction}.")
    inter = _canonical(interactions)
    rng = np.random.default_rng(seed)
    inter = inter.with_columns(_r=pl.Series(rng.random(inter.height)))
    n = pl.len().over(S.USER_ID)
    n_val = pl.min_horizontal((n.cast(pl.Float64) * fraction).round(0), n - min_train)
    rank = pl.col("_r").rank("ordinal").over(S.USER_ID)
    split = _finish(
        inter,
        rank <= n_val,
        {"kind": "random_holdout", "fraction": fraction, "seed": seed, "min_train": min_train},
    )
    return Split(split.train.drop("_r"), split.val.drop("_r"), split.spec)


def leave_last_n(interactions: pl.DataFrame, n: int = 1, min_train: int = 1) -> Split:
    """Hold out each user's last ``n`` interactions by timestamp (or by ``order`` without one)."""
    if n < 1:
        raise DataError(f"split.n must be >= 1, got {n}.")
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
    is_val = (from_end <= n) & (count - from_end >= min_train)
    return _finish(
        inter, is_val, {"kind": "leave_last_n", "n": n, "key": key, "min_train": min_train}
    )


def time_cutoff(interactions: pl.DataFrame, cutoff: int) -> Split:
    """Global temporal split: interactions at or after ``cutoff`` (unix seconds) are validation.

    Users who appear only after the cutoff are kept in validation as cold-start users.
    """
    inter = _canonical(interactions)
    if inter.get_column(S.TIMESTAMP).null_count():
        raise DataError(
            "time_cutoff needs a timestamp on every interaction; "
            "use split=random_holdout or leave_last_n instead."
        )
    return _finish(inter, pl.col(S.TIMESTAMP) >= cutoff, {"kind": "time_cutoff", "cutoff": cutoff})
