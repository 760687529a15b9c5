"""A prepared dataset: canonical tables + split + vocabularies, stored as Parquet.

``prepare()`` is the fit-time step (vocabularies come from the training split and the
catalogue only); ``PreparedData.load()`` is what training, evaluation and benchmarks read.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp

from recsys.data import schema as S
from recsys.data.io import Dataset
from recsys.data.split import Split
from recsys.errors import DataError
from recsys.features.vocab import NUM_RESERVED, IdVocab

USER_IDX = "user_idx"
BOOK_IDX = "book_idx"
TABLES = ("train", "val", "test", "books", "users")
MARKS_INDEXED: dict[str, pl.DataType] = {
    **S.MARKS_SCHEMA,
    USER_IDX: pl.Int64(),
    BOOK_IDX: pl.Int64(),
}


@dataclass(frozen=True)
class PreparedData:
    """Everything downstream jobs need, with ``user_idx``/``book_idx`` columns from the vocabs."""

    name: str
    train: pl.DataFrame
    val: pl.DataFrame
    books: pl.DataFrame
    users: pl.DataFrame
    user_vocab: IdVocab
    book_vocab: IdVocab
    summary: dict[str, Any]
    test: pl.DataFrame = None  # type: ignore[assignment]  # the test carve; empty when none
    # readers' "not for me" marks of training users on vocabulary books (user_idx, book_idx
    # and the ids): the retriever's hard negatives; empty when the data has none
    marks: pl.DataFrame = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.test is None:
            object.__setattr__(self, "test", self.val.clear())
        if self.marks is None:
            object.__setattr__(self, "marks", pl.DataFrame(schema=MARKS_INDEXED))

    @property
    def n_users(self) -> int:
        return self.user_vocab.size

    @property
    def n_books(self) -> int:
        return self.book_vocab.size

    def matrix(self, split: str = "train", binary: bool = False) -> sp.csr_matrix:
        """User x book CSR matrix over vocab indices (rows/cols 0 and 1 are empty) of one
        part (``train``, ``val`` or ``test``), or of several joined by ``+`` (``train+val``)."""
        parts = split.split("+")
        unknown = set(parts) - {"train", "val", "test"}
        if unknown:
            raise ValueError(f"unknown split part(s) {sorted(unknown)}; use train, val or test")
        frame = pl.concat([getattr(self, part) for part in parts], how="diagonal_relaxed")
        frame = frame.filter(pl.col(BOOK_IDX) > 1)
        values = (
            np.ones(frame.height, dtype=np.float32)
            if binary
            else frame.get_column(S.WEIGHT).to_numpy().astype(np.float32)
        )
        rows = frame.get_column(USER_IDX).to_numpy()
        cols = frame.get_column(BOOK_IDX).to_numpy()
        return sp.csr_matrix((values, (rows, cols)), shape=(self.n_users, self.n_books))

    def save(self, folder: str | Path) -> Path:
        """Write atomically: a temp folder is renamed into place."""
        target = Path(folder)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            for table in TABLES:
                getattr(self, table).write_parquet(tmp / f"{table}.parquet")
            self.user_vocab.save(tmp / "users.vocab.parquet")
            self.book_vocab.save(tmp / "books.vocab.parquet")
            (tmp / "summary.json").write_text(json.dumps(self.summary, indent=2))
            if self.marks.height:
                self.marks.write_parquet(tmp / "marks.parquet")
            if target.exists():
                shutil.rmtree(target)
            tmp.rename(target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
        return target

    def dataset(self) -> Dataset:
        """The canonical tables again (every part's interactions together, without the
        vocabulary columns): what a retrain adds stored events to."""
        interactions = pl.concat([self.train, self.val, self.test], how="diagonal_relaxed").select(
            list(S.INTERACTIONS_SCHEMA)
        )
        return Dataset(
            self.name,
            interactions,
            self.books.select(list(S.BOOKS_SCHEMA)),
            self.users.select(list(S.USERS_SCHEMA)),
            marks=self.marks.select(list(S.MARKS_SCHEMA)) if self.marks.height else None,
        )

    @classmethod
    def load(cls, folder: str | Path) -> PreparedData:
        path = Path(folder)
        if not (path / "summary.json").is_file():
            raise DataError(
                f"{path} is not a prepared dataset. Run `recsys data prepare data=<name>` first."
            )
        summary = json.loads((path / "summary.json").read_text())
        tables = {
            t: pl.read_parquet(path / f"{t}.parquet")
            for t in TABLES
            if t != "test" or (path / "test.parquet").is_file()  # prepared before test carves
        }
        if (path / "marks.parquet").is_file():
            tables["marks"] = pl.read_parquet(path / "marks.parquet")
        return cls(
            name=summary["name"],
            user_vocab=IdVocab.load(path / "users.vocab.parquet"),
            book_vocab=IdVocab.load(path / "books.vocab.parquet"),
            summary=summary,
            **tables,
        )


def prepare(dataset: Dataset, split_fn: Callable[[pl.DataFrame], Split]) -> PreparedData:
    """Split a dataset, fit vocabularies on the training side, and index every table.

    The user vocabulary holds training users; the book vocabulary holds the catalogue plus
    every book seen in training (so catalogue-only books can still be embedded from their
    side features). Validation-only ids map to OOV.
    """
    split = split_fn(dataset.interactions)
    user_vocab = IdVocab.fit(split.train.get_column(S.USER_ID))
    book_vocab = IdVocab.fit(
        pl.concat([split.train.get_column(S.BOOK_ID), dataset.books.get_column(S.BOOK_ID)])
    )

    def index(frame: pl.DataFrame) -> pl.DataFrame:
        return encode_ids(frame, user_vocab, book_vocab)

    assert split.test is not None
    train, val, test = index(split.train), index(split.val), index(split.test)
    books, users = index_side_tables(dataset.books, dataset.users, user_vocab, book_vocab)
    summary = _summary(dataset, split, train, val, test, user_vocab, book_vocab)
    marks = pl.DataFrame(schema=MARKS_INDEXED)
    if dataset.marks is not None and dataset.marks.height:
        marks = index(dataset.marks.select(list(S.MARKS_SCHEMA))).filter(
            (pl.col(USER_IDX) >= NUM_RESERVED) & (pl.col(BOOK_IDX) >= NUM_RESERVED)
        )
        summary["marks"] = marks.height
    return PreparedData(
        dataset.name, train, val, books, users, user_vocab, book_vocab, summary, test, marks
    )


def encode_ids(frame: pl.DataFrame, user_vocab: IdVocab, book_vocab: IdVocab) -> pl.DataFrame:
    """``frame`` with its ``user_idx`` and ``book_idx`` columns (OOV ids: 1)."""
    return frame.with_columns(
        pl.Series(USER_IDX, user_vocab.encode(frame.get_column(S.USER_ID))),
        pl.Series(BOOK_IDX, book_vocab.encode(frame.get_column(S.BOOK_ID))),
    )


def index_side_tables(
    books: pl.DataFrame, users: pl.DataFrame, user_vocab: IdVocab, book_vocab: IdVocab
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The catalogue over the book vocabulary (a row for every vocabulary book, catalogue
    or not) and the user table, each with its vocabulary column."""
    books = books.join(pl.DataFrame({S.BOOK_ID: book_vocab.ids}), on=S.BOOK_ID, how="right")
    books = books.select(list(S.BOOKS_SCHEMA)).with_columns(
        pl.col("tags").fill_null(pl.lit([], dtype=pl.List(pl.String))),
        pl.Series(BOOK_IDX, book_vocab.encode(books.get_column(S.BOOK_ID))),
    )
    users = users.with_columns(pl.Series(USER_IDX, user_vocab.encode(users.get_column(S.USER_ID))))
    return books, users


def fingerprint(frame: pl.DataFrame, spec: dict[str, Any]) -> str:
    """sha256 of the (user, book) pairs in canonical order plus the split spec."""
    pairs = frame.select(S.USER_ID, S.BOOK_ID).sort([S.USER_ID, S.BOOK_ID])
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode())
    for column in (S.USER_ID, S.BOOK_ID):
        digest.update("\n".join(pairs.get_column(column).to_list()).encode())
    return digest.hexdigest()


def _summary(
    dataset: Dataset,
    split: Split,
    train: pl.DataFrame,
    val: pl.DataFrame,
    test: pl.DataFrame,
    user_vocab: IdVocab,
    book_vocab: IdVocab,
) -> dict[str, Any]:
    def held_out(frame: pl.DataFrame) -> dict[str, int]:
        return {
            "interactions": frame.height,
            "users": frame.get_column(S.USER_ID).n_unique(),
            "oov_users": int((frame.get_column(USER_IDX) == 1).sum()),
            "oov_books": int((frame.get_column(BOOK_IDX) == 1).sum()),
        }

    inter = dataset.interactions
    n_users = inter.get_column(S.USER_ID).n_unique()
    n_books = inter.get_column(S.BOOK_ID).n_unique()
    return {
        "name": dataset.name,
        "users": n_users,
        "books": n_books,
        "catalogue_books": dataset.books.height,
        "interactions": inter.height,
        "density": inter.height / max(n_users * n_books, 1),
        "duplicates_merged": dataset.duplicates,
        "split": split.spec,
        "train": {"interactions": train.height, "users": train.get_column(S.USER_ID).n_unique()},
        "val": held_out(val),
        "test": held_out(test),
        "vocab": {"users": len(user_vocab), "books": len(book_vocab)},
        "data_fingerprint": fingerprint(inter, split.spec),
        "data_cutoff": data_cutoff(inter),
    }


def data_cutoff(interactions: pl.DataFrame) -> float | None:
    """The latest interaction time (unix seconds), None when no interaction has one."""
    latest = interactions.get_column(S.TIMESTAMP).max()
    return None if latest is None else float(latest)  # type: ignore[arg-type]
