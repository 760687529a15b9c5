"""The bundle's training summary: the reference distributions serving's drift signals are
compared with (:mod:`recsys.drift`).

The population is the validation carve, the offline stand-in for users who come back after
training (a bundle fit on every interaction, ``fit=all``, holds nothing out: its population is
the training users, and the unknown-user and unknown-book references are all known):

- ``event_type``: the training interactions. Training data carries no event types; an
  interaction with a rating counts as ``rate``, any other as ``read``.
- ``unknown_user``: validation users outside the training user vocabulary.
- ``unknown_book``: validation interactions on books outside the book vocabulary.
- ``history_length``: each validation user's known history (every part: training,
  validation and the test carve, what serving reads for them).
- ``top_score``: the first score of the served pipeline's list for up to ``max_users`` of the
  known validation users from that history (seen books excluded, as served).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from recsys.bundle import layout
from recsys.bundle.reader import history_matrix
from recsys.data import schema as S
from recsys.data.prepared import BOOK_IDX, USER_IDX, PreparedData
from recsys.drift import Reference, TrainingSummary
from recsys.features.pipeline import user_histories
from recsys.features.vocab import NUM_RESERVED
from recsys.stores.schema import EVENT_TYPES
from recsys.types import Recommender

BATCH = 256


def training_summary(
    data: PreparedData, served: Recommender, max_users: int = 1000, seed: int = 0
) -> TrainingSummary:
    """Reference distributions of every drift signal (see the module docstring).

    Args:
        data: the prepared data the bundle is trained on.
        served: the pipeline the bundle serves (two-stage, or two-tower without a ranker).
        max_users: validation users scored for ``top_score`` (a seeded sample).
        seed: the sample's seed.
    """
    val = data.val if data.val.height else data.train  # fit=all: the training users
    types = np.where(data.train.get_column(S.RATING).is_null().to_numpy(), "read", "rate")
    users = val.group_by(S.USER_ID).agg(pl.col(USER_IDX).first())
    known = user_histories(pl.concat([data.train, data.val, data.test], how="diagonal_relaxed"))
    returning = users.join(known, on=S.USER_ID, how="inner", maintain_order="left")
    lengths = returning.get_column("history").list.len().to_numpy()
    signals = {
        "event_type": Reference.categorical(EVENT_TYPES, types.tolist()),
        "unknown_user": _unknown(users.get_column(USER_IDX)),
        "unknown_book": _unknown(val.get_column(BOOK_IDX)),
        "history_length": Reference.numeric(lengths),
        "top_score": Reference.numeric(top_scores(data, served, returning, max_users, seed)),
    }
    return TrainingSummary(signals)


def _unknown(indices: pl.Series) -> Reference:
    flags = np.where(indices.to_numpy() < NUM_RESERVED, "unknown", "known")
    return Reference.categorical(("known", "unknown"), flags.tolist())


def top_scores(
    data: PreparedData, served: Recommender, returning: pl.DataFrame, max_users: int, seed: int
) -> np.ndarray:
    """The first score of ``served``'s list for a seeded sample of the users in
    ``returning`` (``user_id``, ``user_idx``, ``history``) known to the model."""
    frame = returning.filter(pl.col(USER_IDX) >= NUM_RESERVED)
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.permutation(frame.height)[:max_users])
    frame = frame[chosen.tolist()] if frame.height else frame
    out: list[np.ndarray] = []
    for start in range(0, frame.height, BATCH):
        part = frame.slice(start, BATCH)
        encoded = [data.book_vocab.encode(pl.Series(h, dtype=pl.String)) for h in part["history"]]
        matrix = history_matrix(encoded, data.n_books)
        _, scores = served.recommend(part.get_column(USER_IDX).to_numpy(), matrix, 1)
        out.append(scores[:, 0])
    scores = np.concatenate(out) if out else np.zeros(0)
    return scores[np.isfinite(scores)]


def write_summary(summary: TrainingSummary, folder: Path) -> None:
    """The bundle part ``summary/``."""
    (folder / layout.TRAINING_SUMMARY).write_text(summary.to_json())
