"""The one feature pipeline: raw ids and metadata -> model input tensors.

``FeaturePipeline.fit`` runs only in training jobs, on the training split, and produces a
``FeatureState`` (plain data: vocabularies, bucket boundaries, lengths) that is saved with the
model. ``transform_books`` / ``transform_users`` are pure functions of (frame, state); training,
evaluation, index building, batch scoring and servers all call them. A single request is a
one-row frame through the same functions.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, TypedDict, cast

import numpy as np
import polars as pl
import torch

from recsys.data import schema as S
from recsys.features.vocab import NUM_RESERVED, OOV, PAD, IdVocab

VOCABS = ("users", "books", "authors", "publishers", "languages", "tags", "countries")


class BookFeatures(TypedDict):
    """Encoded book inputs, each ``[n]`` except ``tags`` ``[n, max_tags]``."""

    book: torch.Tensor
    author: torch.Tensor
    publisher: torch.Tensor
    year: torch.Tensor
    language: torch.Tensor
    tags: torch.Tensor


class UserFeatures(TypedDict):
    """Encoded user inputs: ``history`` ``[n, max_history]`` (0-padded, most recent last)."""

    user: torch.Tensor
    history: torch.Tensor
    age: torch.Tensor
    country: torch.Tensor


@dataclass(frozen=True)
class FeatureConfig:
    """Fit-time choices, saved with the state."""

    max_history: int = 100
    max_tags: int = 8
    year_boundaries: tuple[int, ...] = (1900, 1950, 1970, 1980, 1990, 1995, 2000, 2005, 2010, 2015)
    age_boundaries: tuple[int, ...] = (18, 25, 35, 45, 55, 65)
    min_tag_books: int = 2

    def __post_init__(self) -> None:
        # Configs deliver lists; keep the dataclass hashable and JSON-stable.
        object.__setattr__(self, "year_boundaries", tuple(self.year_boundaries))
        object.__setattr__(self, "age_boundaries", tuple(self.age_boundaries))


@dataclass(frozen=True)
class FeatureState:
    """Everything ``transform_*`` needs; saved as parquet vocabularies + JSON (no pickle)."""

    config: FeatureConfig
    users: IdVocab
    books: IdVocab
    authors: IdVocab
    publishers: IdVocab
    languages: IdVocab
    tags: IdVocab
    countries: IdVocab

    def sizes(self) -> dict[str, int]:
        """Embedding-table sizes the towers are built with (derived from data, not YAML)."""
        return {
            "num_users": self.users.size,
            "num_books": self.books.size,
            "num_authors": self.authors.size,
            "num_publishers": self.publishers.size,
            "num_languages": self.languages.size,
            "num_tags": self.tags.size,
            "num_countries": self.countries.size,
            "num_year_buckets": len(self.config.year_boundaries) + 2,
            "num_age_buckets": len(self.config.age_boundaries) + 2,
        }

    def save(self, folder: str | Path) -> None:
        path = Path(folder)
        path.mkdir(parents=True, exist_ok=True)
        for name in VOCABS:
            getattr(self, name).save(path / f"{name}.vocab.parquet")
        config = asdict(self.config)
        (path / "feature_state.json").write_text(json.dumps({"config": config}, indent=2))

    @classmethod
    def load(cls, folder: str | Path) -> FeatureState:
        path = Path(folder)
        raw = json.loads((path / "feature_state.json").read_text())["config"]
        vocabs = {name: IdVocab.load(path / f"{name}.vocab.parquet") for name in VOCABS}
        return cls(FeatureConfig(**raw), **vocabs)


def _first_author(books: pl.DataFrame) -> pl.Series:
    return books.get_column("authors").str.split(",").list.first().str.strip_chars()


class FeaturePipeline:
    """Fits a FeatureState from training data and the catalogue."""

    def __init__(self, config: FeatureConfig | None = None) -> None:
        self.config = config or FeatureConfig()

    def fit(
        self,
        train: pl.DataFrame,
        books: pl.DataFrame,
        users: pl.DataFrame,
        user_vocab: IdVocab,
        book_vocab: IdVocab,
    ) -> FeatureState:
        """Fit side-feature vocabularies; id vocabularies come from the prepared split.

        Args:
            train: training interactions (only their users matter here).
            books: the catalogue (metadata is not user data, so all of it is used).
            users: user table (country vocabulary from training users only).
            user_vocab: user id vocabulary fitted on the training split.
            book_vocab: book id vocabulary (training books + catalogue).
        """
        train_users = users.join(train.select(S.USER_ID).unique(), on=S.USER_ID, how="semi")
        tag_counts = (
            books.select(pl.col("tags").explode().alias("t")).drop_nulls().group_by("t").len()
        )
        authors = _first_author(books).drop_nulls()
        common_tags = tag_counts.filter(pl.col("len") >= self.config.min_tag_books).get_column("t")
        return FeatureState(
            config=self.config,
            users=user_vocab,
            books=book_vocab,
            authors=IdVocab.fit(authors.filter(authors != "")),
            publishers=IdVocab.fit(books.get_column("publisher").drop_nulls()),
            languages=IdVocab.fit(books.get_column("language").drop_nulls()),
            tags=IdVocab.fit(common_tags),
            countries=IdVocab.fit(train_users.get_column("country").drop_nulls()),
        )


def _buckets(values: pl.Series, boundaries: Sequence[int]) -> np.ndarray:
    """Bucket index: 0 = unknown, 1 = below the first boundary, ..."""
    raw = values.cast(pl.Float64).to_numpy()
    out = np.searchsorted(np.asarray(boundaries), np.nan_to_num(raw, nan=0.0), side="right") + 1
    out[np.isnan(raw)] = PAD
    return out.astype(np.int64)


def pad_ragged(
    flat: np.ndarray, lengths: np.ndarray, width: int, keep: Literal["first", "last"]
) -> np.ndarray:
    """Ragged rows of indices (``flat`` cut by ``lengths``) as ``[n, width]``, 0 = padding, in
    array operations (no Python loop over rows: a bundle's 70k users are encoded when it is
    loaded, during a hot swap while requests are served). Indices ``<= OOV`` are dropped.

    Args:
        flat: ``[sum(lengths)]`` indices, row after row.
        lengths: ``[n]`` row lengths.
        width: output columns.
        keep: ``"last"`` keeps each row's last ``width`` kept indices right-aligned (histories:
            the most recent books); ``"first"`` its first ``width`` left-aligned (tags).
    """
    flat = np.asarray(flat, dtype=np.int64)
    rows = np.repeat(np.arange(len(lengths)), np.asarray(lengths, dtype=np.int64))
    kept = flat > OOV
    flat, rows = flat[kept], rows[kept]
    counts = np.bincount(rows, minlength=len(lengths))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    position = np.arange(flat.size) - starts[rows]  # within the row, after dropping
    # right-aligned: a negative column is older than the last ``width``
    column = width - counts[rows] + position if keep == "last" else position
    inside = (column >= 0) & (column < width)
    out = np.zeros((len(lengths), width), dtype=np.int64)
    out[rows[inside], column[inside]] = flat[inside]
    return out


def transform_books(books: pl.DataFrame, state: FeatureState) -> BookFeatures:
    """Encode catalogue rows (canonical books schema) into book-tower inputs."""
    tags = books.get_column("tags").fill_null([]).list.drop_nulls()  # a null tag is OOV
    codes = state.tags.encode(tags.explode().drop_nulls())
    lengths = tags.list.len().to_numpy()

    def ids(vocab: IdVocab, column: pl.Series) -> torch.Tensor:
        encoded = vocab.encode(column.fill_null(""))
        encoded[column.is_null().to_numpy()] = PAD
        return torch.from_numpy(encoded)

    return BookFeatures(
        book=torch.from_numpy(state.books.encode(books.get_column(S.BOOK_ID))),
        author=ids(state.authors, _first_author(books)),
        publisher=ids(state.publishers, books.get_column("publisher")),
        year=torch.from_numpy(_buckets(books.get_column("year"), state.config.year_boundaries)),
        language=ids(state.languages, books.get_column("language")),
        tags=torch.from_numpy(pad_ragged(codes, lengths, state.config.max_tags, "first")),
    )


def transform_users(users: pl.DataFrame, state: FeatureState) -> UserFeatures:
    """Encode user rows into user-tower inputs.

    Args:
        users: columns ``user_id`` (str), ``history`` (list[str] of book ids, oldest first),
            and optionally ``age`` and ``country``. A new user is a row with an unknown
            ``user_id`` (or null) and whatever history is known.
    """
    frame = users
    for name, dtype in (("age", pl.Int32), ("country", pl.String)):
        if name not in frame.columns:
            frame = frame.with_columns(pl.lit(None, dtype=dtype).alias(name))
    hist = frame.get_column("history").fill_null([]).list.drop_nulls()  # a null book is OOV
    lengths = hist.list.len().to_numpy().astype(np.int64)
    encoded = state.books.encode(hist.explode().drop_nulls())
    country = state.countries.encode(frame.get_column("country").fill_null(""))
    country[frame.get_column("country").is_null().to_numpy()] = PAD
    return UserFeatures(
        user=torch.from_numpy(state.users.encode(frame.get_column(S.USER_ID).fill_null(""))),
        history=torch.from_numpy(pad_ragged(encoded, lengths, state.config.max_history, "last")),
        age=torch.from_numpy(_buckets(frame.get_column("age"), state.config.age_boundaries)),
        country=torch.from_numpy(country),
    )


def user_histories(interactions: pl.DataFrame) -> pl.DataFrame:
    """``(user_id, history)`` with each user's book ids oldest first (timestamp, then order)."""
    keys = [S.USER_ID, S.TIMESTAMP, S.ORDER, S.BOOK_ID]
    return (
        interactions.sort(keys, nulls_last=False)
        .group_by(S.USER_ID, maintain_order=True)
        .agg(pl.col(S.BOOK_ID).alias("history"))
    )


def _with_reserved_rows(encoded: Mapping[str, Any], id_key: str) -> dict[str, Any]:
    """Prepend rows for indices 0 (padding) and 1 (OOV): ids 0 and 1, everything else 0."""
    out: dict[str, Any] = {}
    for key, value in encoded.items():
        head = torch.zeros((NUM_RESERVED, *value.shape[1:]), dtype=value.dtype)
        if key == id_key:
            head = torch.arange(NUM_RESERVED, dtype=value.dtype)
        out[key] = torch.cat([head, value])
    return out


def book_feature_table(books: pl.DataFrame, state: FeatureState) -> BookFeatures:
    """Book inputs for every vocabulary index: row ``i`` encodes book index ``i``.

    Rows 0 (padding) and 1 (OOV) are all-padding; vocabulary books missing from ``books`` get
    their id only.
    """
    catalogue = pl.DataFrame({S.BOOK_ID: state.books.ids}).join(
        books.select(list(S.BOOKS_SCHEMA)), on=S.BOOK_ID, how="left", maintain_order="left"
    )
    return cast(BookFeatures, _with_reserved_rows(transform_books(catalogue, state), "book"))


def user_feature_table(
    histories: pl.DataFrame, users: pl.DataFrame, state: FeatureState
) -> UserFeatures:
    """User inputs for every vocabulary index (row ``i`` = user index ``i``).

    Args:
        histories: ``(user_id, history)`` as made by :func:`user_histories`.
        users: user side features (canonical users schema).
        state: the fitted feature state.
    """
    frame = pl.DataFrame({S.USER_ID: state.users.ids})
    frame = frame.join(histories, on=S.USER_ID, how="left", maintain_order="left")
    side = users.select(S.USER_ID, "age", "country")
    frame = frame.join(side, on=S.USER_ID, how="left", maintain_order="left")
    return cast(UserFeatures, _with_reserved_rows(transform_users(frame, state), "user"))
