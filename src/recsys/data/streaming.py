"""Preparing interaction files larger than memory: ``data=custom data.buckets=K``.

The in-memory path (:func:`recsys.data.prepared.prepare`) holds every interaction, with its
string ids, at once. This one never does. It streams the interactions file once into ``K``
buckets on disk by a hash of the user id (polars' streaming engine, a batch of rows at a
time), so every user's rows land in one bucket; then takes the buckets one at a
time through the same steps as the in-memory path (validation and duplicate merging,
:func:`recsys.data.io.build_dataset`; erased users left out; the configured split), keeping
only each bucket's distinct ids and counts. The vocabularies are the sorted distinct ids, as
:meth:`recsys.features.vocab.IdVocab.fit` makes them; a second pass over the buckets encodes
each part, and the final tables are the buckets' parts streamed into one Parquet file each.
Peak memory is a batch, one bucket and the vocabularies, whatever the file's size
(docs/results/scale.md).

What is the same as in memory: every table, column and dtype, each user's rows and their
order, the vocabularies and the summary's counts. The splits that look at each user's own
rows alone draw the same rows (``leave_last_n``, ``time_cutoff``); ``random_holdout`` holds
out the same number of each user's rows, drawn per bucket, so not the same ones. Users come
bucket by bucket instead of in id order, and ``data_fingerprint`` is a digest of the buckets'
digests (a streamed and an in-memory preparation of one file have different fingerprints).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from recsys.data import schema as S
from recsys.data.io import build_dataset, conform_side_tables
from recsys.data.prepared import (
    BOOK_IDX,
    USER_IDX,
    data_cutoff,
    encode_ids,
    fingerprint,
    index_side_tables,
)
from recsys.data.split import Split
from recsys.errors import DataError
from recsys.features.vocab import IdVocab

log = logging.getLogger(__name__)

BUCKET = "_bucket"
BATCH_ROWS = 250_000  # rows a streaming batch holds while it is cut into buckets
PARTS = ("train", "val", "test")


def scan_interactions(path: str | Path, columns: Mapping[str, str] | None = None) -> pl.LazyFrame:
    """The interactions file as a lazy frame with the canonical column names (nothing read)."""
    file = Path(path)
    if not file.is_file():
        raise DataError(f"interactions file {file} does not exist. Fix data.reader.interactions.")
    kind = file.suffix
    if kind == ".parquet":
        frame = pl.scan_parquet(file)
    elif kind in (".csv", ".tsv", ".txt"):
        sep = "\t" if kind in (".tsv", ".txt") else ","
        frame = pl.scan_csv(file, separator=sep, infer_schema=False)
    else:
        raise DataError(
            f"{file}: data.buckets streams .parquet, .csv or .tsv files (not compressed); "
            "decompress it, or leave data.buckets unset to read it in memory."
        )
    names = frame.collect_schema().names()
    if columns:
        missing = [src for src in columns.values() if src not in names]
        if missing:
            raise DataError(
                f"{file}: column(s) {missing} named in the column mapping are not in the file "
                f"(it has {names}). Fix data.reader.interaction_columns."
            )
        frame = frame.rename({src: dst for dst, src in columns.items()})
        names = frame.collect_schema().names()
    missing = [c for c in S.INTERACTIONS_REQUIRED if c not in names]
    if missing:
        raise DataError(
            f"{file}: missing column(s) {missing}; found {names}. Set "
            "data.reader.interaction_columns to map them."
        )
    return frame.select([c for c in S.INTERACTIONS_SCHEMA if c in names])


@dataclass
class _Tally:
    """What the passes keep of each bucket: distinct ids, counts, digests."""

    users: int = 0
    interactions: int = 0
    duplicates: int = 0
    cutoff: float | None = None
    train_users: list[pl.Series] = field(default_factory=list)
    train_books: list[pl.Series] = field(default_factory=list)
    books: list[pl.Series] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PARTS, 0))
    part_users: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PARTS, 0))
    oov_users: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PARTS, 0))
    oov_books: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PARTS, 0))
    digests: list[str] = field(default_factory=list)
    spec: dict[str, Any] = field(default_factory=dict)
    erased_ids: list[str] = field(default_factory=list)


def prepare_streaming(
    name: str,
    interactions: pl.LazyFrame,
    split_fn: Callable[[pl.DataFrame], Split],
    folder: str | Path,
    buckets: int,
    books: pl.DataFrame | None = None,
    users: pl.DataFrame | None = None,
    erased: Callable[[pl.Series], list[str]] | None = None,
    extra: Mapping[str, Any] | None = None,
    source: str = "interactions",
) -> dict[str, Any]:
    """Prepare ``interactions`` into ``folder`` (the layout :meth:`PreparedData.load` reads)
    through ``buckets`` buckets on disk; returns the summary.

    Args:
        name: the dataset's name.
        interactions: the canonical interactions, lazily (:func:`scan_interactions`).
        split_fn: the configured split (applied to each bucket).
        folder: the prepared folder, written atomically (a temp folder renamed into place).
        buckets: how many buckets: peak memory is about the file's in-memory size / buckets.
        books: the catalogue (in memory: books are few next to interactions).
        users: the user table (in memory).
        erased: user ids -> those erased (the store's erasures), left out.
        extra: more summary entries (the source config).
        source: the file's name, in error messages.
    """
    if buckets < 1:
        raise DataError(f"data.buckets must be >= 1, got {buckets}.")
    extra = dict(extra or {})
    target = Path(folder)
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.stream.", dir=target.parent))
    try:
        folders = _spread(interactions, scratch / "buckets", buckets)
        if not folders:
            raise DataError(f"{name}: the interactions file has no rows.")
        catalogue, user_table = conform_side_tables(name, books, users)
        tally = _Tally()
        for i, bucket in enumerate(folders):
            _split_bucket(source, bucket, split_fn, erased, scratch / f"split{i}", tally, name)
        if not tally.train_users:
            raise DataError(f"{name}: no interactions left (every user erased).")
        user_vocab = IdVocab.fit(pl.concat(tally.train_users))
        book_vocab = IdVocab.fit(pl.concat([*tally.train_books, catalogue.get_column(S.BOOK_ID)]))
        out = scratch / "prepared"
        out.mkdir()
        for part in PARTS:
            _encode_part(part, len(folders), scratch, out, user_vocab, book_vocab, tally)
        if tally.erased_ids:  # erased readers' profiles go too, as in memory
            user_table = user_table.filter(~pl.col(S.USER_ID).is_in(tally.erased_ids))
        _write_tables(catalogue, user_table, user_vocab, book_vocab, out)
        summary = {**_summary(name, catalogue, tally, user_vocab, book_vocab, buckets), **extra}
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        if target.exists():
            shutil.rmtree(target)
        out.rename(target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    log.info("prepared %s into %s through %d buckets", name, target, buckets)
    return summary


def _spread(interactions: pl.LazyFrame, folder: Path, buckets: int) -> list[Path]:
    """Stream the interactions into ``buckets`` folders by a hash of the user id: batches of
    :data:`BATCH_ROWS` rows from polars' streaming engine, each cut by bucket and written as
    one small file per bucket. Returns the folders that got rows."""
    bucket = (pl.col(S.USER_ID).cast(pl.String).hash(seed=0) % buckets).alias(BUCKET)
    for i, batch in enumerate(interactions.collect_batches(chunk_size=BATCH_ROWS)):
        for part in batch.with_columns(bucket).partition_by(BUCKET, include_key=True):
            key = int(part.get_column(BUCKET)[0])
            target = folder / f"{key:05d}"
            target.mkdir(parents=True, exist_ok=True)
            part.drop(BUCKET).write_parquet(target / f"{i:06d}.parquet")
    return sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def _split_bucket(
    source: str,
    bucket: Path,
    split_fn: Callable[[pl.DataFrame], Split],
    erased: Callable[[pl.Series], list[str]] | None,
    out: Path,
    tally: _Tally,
    name: str,
) -> None:
    """One bucket in memory: validate and merge, drop erased users, split, write the parts."""
    raw = pl.read_parquet(bucket)
    dataset = build_dataset(name, raw, source=source)
    inter = dataset.interactions
    if erased is not None:
        gone = erased(inter.get_column(S.USER_ID).unique())
        if gone:
            inter = inter.filter(~pl.col(S.USER_ID).is_in(gone))
            tally.erased_ids.extend(gone)
    if inter.height == 0:
        return
    split = split_fn(inter)
    assert split.test is not None
    out.mkdir()
    for part in PARTS:
        getattr(split, part).write_parquet(out / f"{part}.parquet")
    tally.users += inter.get_column(S.USER_ID).n_unique()
    tally.interactions += inter.height
    tally.duplicates += dataset.duplicates
    tally.books.append(inter.get_column(S.BOOK_ID).unique())
    tally.train_users.append(split.train.get_column(S.USER_ID).unique())
    tally.train_books.append(split.train.get_column(S.BOOK_ID).unique())
    latest = data_cutoff(inter)
    if latest is not None:
        tally.cutoff = latest if tally.cutoff is None else max(tally.cutoff, latest)
    tally.digests.append(fingerprint(inter, {}))  # the bucket's pairs
    tally.spec = split.spec


def _encode_part(
    part: str,
    count: int,
    scratch: Path,
    out: Path,
    user_vocab: IdVocab,
    book_vocab: IdVocab,
    tally: _Tally,
) -> None:
    """Add the vocabulary columns to every bucket's ``part`` and stream them into one file."""
    encoded = []
    for i in range(count):
        source = scratch / f"split{i}" / f"{part}.parquet"
        if not source.is_file():
            continue  # every user of the bucket was erased
        frame = encode_ids(pl.read_parquet(source), user_vocab, book_vocab)
        tally.rows[part] += frame.height
        tally.part_users[part] += frame.get_column(S.USER_ID).n_unique()
        tally.oov_users[part] += int((frame.get_column(USER_IDX) == 1).sum())
        tally.oov_books[part] += int((frame.get_column(BOOK_IDX) == 1).sum())
        path = scratch / f"split{i}" / f"{part}.encoded.parquet"
        frame.write_parquet(path)
        encoded.append(path)
    pl.scan_parquet(encoded).sink_parquet(out / f"{part}.parquet")  # one bucket at least


def _write_tables(
    catalogue: pl.DataFrame,
    user_table: pl.DataFrame,
    user_vocab: IdVocab,
    book_vocab: IdVocab,
    out: Path,
) -> None:
    """The catalogue and the users with their vocabulary columns, as the in-memory path has
    them, and the vocabularies."""
    books, users = index_side_tables(catalogue, user_table, user_vocab, book_vocab)
    books.write_parquet(out / "books.parquet")
    users.write_parquet(out / "users.parquet")
    user_vocab.save(out / "users.vocab.parquet")
    book_vocab.save(out / "books.vocab.parquet")


def _summary(
    name: str,
    catalogue: pl.DataFrame,
    tally: _Tally,
    user_vocab: IdVocab,
    book_vocab: IdVocab,
    buckets: int,
) -> dict[str, Any]:
    """The in-memory path's summary, from the buckets' counts."""
    n_books = pl.concat(tally.books).n_unique() if tally.books else 0

    def held_out(part: str) -> dict[str, int]:
        return {
            "interactions": tally.rows[part],
            "users": tally.part_users[part],
            "oov_users": tally.oov_users[part],
            "oov_books": tally.oov_books[part],
        }

    digest = hashlib.sha256(json.dumps(tally.spec, sort_keys=True).encode())
    for part in tally.digests:
        digest.update(part.encode())
    return {
        "name": name,
        "users": tally.users,
        "books": n_books,
        "catalogue_books": catalogue.height,
        "interactions": tally.interactions,
        "density": tally.interactions / max(tally.users * n_books, 1),
        "duplicates_merged": tally.duplicates,
        "split": tally.spec,
        "train": {"interactions": tally.rows["train"], "users": tally.part_users["train"]},
        "val": held_out("val"),
        "test": held_out("test"),
        "vocab": {"users": len(user_vocab), "books": len(book_vocab)},
        "data_fingerprint": digest.hexdigest(),
        "data_cutoff": tally.cutoff,
        "streaming": {"buckets": buckets, "erased_users": len(tally.erased_ids)},
    }
