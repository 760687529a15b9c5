"""The recent holdout a retrain judges its candidate on, carved before the candidate trains.

Per user, the latest ``n`` interactions by time (undated interactions count as older than dated
ones and are ordered among themselves by a seeded draw, so data without time gets a seeded
carve) among those the production bundle did not train on: production is never scored on what
it learned from, and the candidate never trains on its holdout. The users whose latest such
interaction is the most recent are taken first (ties broken by the seeded draw), up to
``max_users``. Everything else is the candidate's training input, and each holdout user's
remaining interactions are the history both models receive.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import polars as pl

from recsys.data import schema as S
from recsys.errors import DataError

_DRAW = "_draw"
_SEEN = "_seen"


@dataclass(frozen=True)
class HoldoutSettings:
    """How the holdout is carved.

    Attributes:
        n: interactions held out per user (the latest ones).
        max_users: holdout users at most (the most recently active first).
        min_history: interactions a holdout user keeps as input, at least.
        seed: the draw that orders undated interactions and ties between users.
    """

    n: int = 2
    max_users: int = 5000
    min_history: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n < 1 or self.max_users < 1 or self.min_history < 1:
            raise DataError(
                f"holdout.n, holdout.max_users and holdout.min_history must be >= 1, got "
                f"{self.n}, {self.max_users} and {self.min_history}."
            )


@dataclass(frozen=True)
class Holdout:
    """The users both models are scored on, what they receive and what they should find.

    Attributes:
        histories: ``(user_id, history)``: each holdout user's remaining interactions, oldest
            first (the input of every model scored).
        positives: ``(user_id, books)``: the held-out books, rows in the order of
            ``histories``.
        spec: how it was carved (settings, kind, counts), for the report.
    """

    histories: pl.DataFrame
    positives: pl.DataFrame
    spec: dict[str, Any]

    @property
    def users(self) -> list[str]:
        return self.histories.get_column(S.USER_ID).to_list()


def carve_holdout(
    interactions: pl.DataFrame, seen: pl.DataFrame | None, settings: HoldoutSettings
) -> tuple[pl.DataFrame, Holdout]:
    """Split ``interactions`` into the candidate's training input and the holdout.

    Args:
        interactions: canonical interactions (every one the retrain read).
        seen: ``(user_id, book_id)`` pairs the production bundle trained on, never held out;
            None without a production bundle.
        settings: how much to hold out.

    Returns:
        The interactions left for training, and the holdout.

    Raises:
        DataError: no user has enough interactions to be held out.
    """
    frame = _in_time_order(interactions, seen, settings.seed)
    eligible = frame.filter(~pl.col(_SEEN))
    from_end = pl.len().over(S.USER_ID) - pl.int_range(pl.len()).over(S.USER_ID)
    held = eligible.filter(from_end <= settings.n)
    users = _chosen_users(frame, held, settings)
    if users.height == 0:
        raise DataError(
            f"no user has {settings.min_history} interaction(s) to keep and one to hold out "
            "that the production bundle did not train on; lower holdout.min_history."
        )
    held = held.join(users, on=S.USER_ID, how="semi")
    rest = frame.join(held, on=[S.USER_ID, S.BOOK_ID], how="anti")
    histories = (
        rest.join(users, on=S.USER_ID, how="semi")
        .group_by(S.USER_ID, maintain_order=True)
        .agg(pl.col(S.BOOK_ID).alias("history"))
        .sort(S.USER_ID)
    )
    positives = histories.select(S.USER_ID).join(
        held.group_by(S.USER_ID).agg(pl.col(S.BOOK_ID).alias("books")), on=S.USER_ID
    )
    spec = {
        **asdict(settings),
        "kind": _kind(held),
        "excludes": "production's training pairs" if seen is not None else "nothing",
        "users": positives.height,
        "positives": held.height,
    }
    remaining = rest.select(list(S.INTERACTIONS_SCHEMA))
    return remaining, Holdout(histories, positives, spec)


def _in_time_order(
    interactions: pl.DataFrame, seen: pl.DataFrame | None, seed: int
) -> pl.DataFrame:
    """Interactions by user, oldest first (undated first, in a seeded order), marked with
    whether production trained on them."""
    frame = interactions.sort([S.USER_ID, S.BOOK_ID])
    draw = np.random.default_rng(seed).random(frame.height)
    frame = frame.with_columns(pl.Series(_DRAW, draw))
    if seen is None:
        frame = frame.with_columns(pl.lit(False).alias(_SEEN))
    else:
        pairs = seen.select(S.USER_ID, S.BOOK_ID).unique().with_columns(pl.lit(True).alias(_SEEN))
        frame = frame.join(pairs, on=[S.USER_ID, S.BOOK_ID], how="left").with_columns(
            pl.col(_SEEN).fill_null(False)
        )
    return frame.sort([S.USER_ID, S.TIMESTAMP, _DRAW], nulls_last=False)


def _chosen_users(
    frame: pl.DataFrame, held: pl.DataFrame, settings: HoldoutSettings
) -> pl.DataFrame:
    """``(user_id)`` of the holdout users: enough left to keep, most recently active first."""
    counts = frame.group_by(S.USER_ID).agg(pl.len().alias("total"))
    latest = held.group_by(S.USER_ID).agg(
        pl.len().alias("held"), pl.col(S.TIMESTAMP).max().alias("latest")
    )
    able = (
        latest.join(counts, on=S.USER_ID)
        .filter(pl.col("total") - pl.col("held") >= settings.min_history)
        .sort(S.USER_ID)
    )
    tie = np.random.default_rng(settings.seed + 1).random(able.height)
    ordered = able.with_columns(pl.Series(_DRAW, tie)).sort(
        ["latest", _DRAW], descending=[True, False], nulls_last=True
    )
    return ordered.head(settings.max_users).select(S.USER_ID)


def _kind(held: pl.DataFrame) -> str:
    dated = held.height - held.get_column(S.TIMESTAMP).null_count()
    if dated == held.height:
        return "latest by time"
    return "seeded carve" if dated == 0 else "latest by time, undated in a seeded order"
