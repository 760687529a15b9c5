"""Readers: each turns one source layout into the canonical tables of `recsys.data.schema`.

Nothing else in the library reads raw data files. Every reader accepts plain or gzipped files
(``train.txt`` or ``train.txt.gz``) and returns a validated :class:`Dataset`.
"""

from __future__ import annotations

import gzip
import html
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from recsys.data import schema as S
from recsys.data.works import derive_book_keys
from recsys.errors import DataError


@dataclass(frozen=True)
class Dataset:
    """Canonical tables of one data source.

    Attributes:
        name: short name of the source (used in paths and reports).
        interactions: canonical interactions, one row per (user, book) pair.
        books: canonical catalogue (may hold books nobody interacted with).
        users: canonical user table (may be empty).
        duplicates: (user, book) rows merged during validation.
        marks: (user, book) pairs the reader marked "not for me" (:data:`S.MARKS_SCHEMA`),
            negatives for training; None when the source has none (files never do; a
            retrain adds the stored marks).
    """

    name: str
    interactions: pl.DataFrame
    books: pl.DataFrame
    users: pl.DataFrame
    duplicates: int = 0
    notes: tuple[str, ...] = field(default_factory=tuple)
    marks: pl.DataFrame | None = None


def build_dataset(
    name: str,
    interactions: pl.DataFrame,
    books: pl.DataFrame | None = None,
    users: pl.DataFrame | None = None,
    source: str = "interactions",
) -> Dataset:
    """Validate raw tables and merge duplicate (user, book) pairs.

    Duplicates are merged, not dropped: weights are summed, the highest rating and the latest
    timestamp are kept, and the number of merged rows is reported in ``Dataset.duplicates``.
    """
    inter = S.conform(interactions, S.INTERACTIONS_SCHEMA, S.INTERACTIONS_REQUIRED, source)
    inter = inter.with_columns(pl.col(S.WEIGHT).fill_null(1.0))
    null_ids = inter.filter(pl.col(S.USER_ID).is_null() | pl.col(S.BOOK_ID).is_null()).height
    if null_ids:
        raise DataError(
            f"{source}: {null_ids} row(s) have an empty user_id or book_id. "
            "Remove them or fix the id columns."
        )
    S.require_rows(inter, source)
    before = inter.height
    inter = (
        inter.group_by(S.USER_ID, S.BOOK_ID, maintain_order=True)
        .agg(
            pl.col(S.WEIGHT).sum(),
            pl.col(S.RATING).max(),
            pl.col(S.TIMESTAMP).max(),
            pl.col(S.ORDER).min(),
        )
        .select(list(S.INTERACTIONS_SCHEMA))
    )
    duplicates = before - inter.height
    book_frame, user_frame = conform_side_tables(name, books, users)
    notes = (f"merged {duplicates} duplicate (user, book) rows",) if duplicates else ()
    return Dataset(name, inter, book_frame, user_frame, duplicates, notes)


def conform_side_tables(
    name: str, books: pl.DataFrame | None, users: pl.DataFrame | None
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The catalogue and the user table in the canonical schema (empty when not given), one
    row per id (the first kept), book keys derived."""
    book_frame = books if books is not None else pl.DataFrame({S.BOOK_ID: []})
    book_frame = S.conform(book_frame, S.BOOKS_SCHEMA, S.BOOKS_REQUIRED, f"{name} books")
    book_frame = book_frame.unique(S.BOOK_ID, keep="first", maintain_order=True).with_columns(
        pl.col("tags").fill_null(pl.lit([], dtype=pl.List(pl.String)))
    )
    book_frame = derive_book_keys(book_frame)
    user_frame = users if users is not None else pl.DataFrame({S.USER_ID: []})
    user_frame = S.conform(user_frame, S.USERS_SCHEMA, S.USERS_REQUIRED, f"{name} users")
    user_frame = user_frame.unique(S.USER_ID, keep="first", maintain_order=True)
    return book_frame, user_frame


def find_file(folder: str | Path, name: str, required: bool = True) -> Path | None:
    """Return ``folder/name`` or ``folder/name.gz``, whichever exists."""
    folder = Path(folder)
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    if required:
        if not folder.is_dir():
            raise DataError(
                f"data folder {folder} does not exist. Set the path in the data config "
                "(e.g. data.reader.path=/path/to/data) or run `recsys download`."
            )
        raise DataError(f"{folder}: neither {name} nor {name}.gz found. Check data.reader.path.")
    return None


def read_bytes(path: Path) -> bytes:
    """Read a plain or gzipped file into memory."""
    if path.suffix == ".gz":
        with gzip.open(path, "rb") as handle:
            return handle.read()
    return path.read_bytes()


def _read_lines(path: Path) -> pl.Series:
    text = read_bytes(path).decode("utf-8")
    return pl.Series("line", text.splitlines(), dtype=pl.String)


# --- Amazon-Book (KGAT release) -------------------------------------------------------------


def read_kgat_split(path: Path) -> pl.DataFrame:
    """Parse a KGAT ``user item item ...`` file into (user_id, book_id, order)."""
    lines = _read_lines(path).str.strip_chars()
    lines = lines.filter(lines != "")
    bad = lines.filter(~lines.str.contains(r"^\d+(\s+\d+)*$"))
    if bad.len():
        raise DataError(
            f"{path}: expected integer ids, found the line '{bad[0][:60]}'. "
            "This reader wants the KGAT layout: one line per user, `user item item ...`."
        )
    parts = lines.str.split(" ")
    frame = pl.DataFrame({"user_id": parts.list.first(), "items": parts.list.slice(1)})
    frame = frame.with_columns(order=pl.int_ranges(pl.col("items").list.len()))
    frame = frame.explode("items", "order").drop_nulls("items")
    return frame.rename({"items": S.BOOK_ID}).with_columns(pl.col("order").cast(pl.Int64))


def read_amazon_book(
    path: str | Path, include_test: bool = False, metadata: Sequence[str | Path] = ()
) -> Dataset:
    """Amazon-Book as released with KGAT: ``train.txt``, ``item_list.txt``, ``user_list.txt``.

    The release has no book metadata, only each book's ASIN (``org_id``), which for a printed
    book is its ISBN-10. ``metadata`` names catalogue folders (Goodbooks-10k, Book-Crossing;
    see :func:`read_catalogue`) whose books are joined by that ISBN: title, authors, year,
    publisher, language, tags and cover for the books they share.

    Args:
        path: folder with the files (plain or ``.gz``).
        include_test: also read ``test.txt`` when present (never used for tuning).
        metadata: catalogue folders, the first that knows a book's field wins.
    """
    folder = Path(path)
    train = read_kgat_split(find_file(folder, "train.txt"))  # type: ignore[arg-type]
    frames = [train]
    test_file = find_file(folder, "test.txt", required=False) if include_test else None
    if test_file is not None:
        frames.append(read_kgat_split(test_file))
    interactions = pl.concat(frames)
    books = None
    item_file = find_file(folder, "item_list.txt", required=False)
    if item_file is not None:
        items = pl.read_csv(io.BytesIO(read_bytes(item_file)), separator=" ", infer_schema=False)
        books = items.select(
            pl.col("remap_id").alias(S.BOOK_ID),
            pl.col("org_id").alias("isbn"),
        )
        if metadata:
            books = with_isbn_metadata(books, [read_catalogue(m) for m in metadata])
    elif metadata:
        raise DataError(
            f"{folder}: item_list.txt not found, so its books' ISBNs are unknown and "
            "`metadata` cannot be joined. Add the file or drop data.metadata."
        )
    return build_dataset("amazon_book", interactions, books, None, source=str(folder / "train.txt"))


METADATA_COLUMNS = ("title", "authors", "year", "publisher", "language", "tags", "image_url")


def read_catalogue(path: str | Path) -> pl.DataFrame:
    """A catalogue folder's books, by ISBN, in the canonical columns: Goodbooks-10k
    (``books.csv``) or Book-Crossing (``items_info.dat``); the interactions are not read."""
    folder = Path(path)
    if find_file(folder, "books.csv", required=False) is not None:
        books = _goodbooks_catalogue(folder)
    elif (items := find_file(folder, "items_info.dat", required=False)) is not None:
        books = _books_crossing_catalogue(items)
    else:
        raise DataError(
            f"{folder}: no books.csv (Goodbooks-10k) or items_info.dat (Book-Crossing) here. "
            "Point data.metadata at such a folder, or drop it."
        )
    conformed = S.conform(books.drop(S.BOOK_ID), S.BOOKS_SCHEMA, (), str(folder))
    return (
        conformed.select("isbn", *METADATA_COLUMNS)
        .filter(pl.col("isbn").is_not_null())
        .unique("isbn", keep="first", maintain_order=True)
    )


def with_isbn_metadata(books: pl.DataFrame, catalogues: Sequence[pl.DataFrame]) -> pl.DataFrame:
    """``books`` (``book_id``, ``isbn``, ...) with each metadata field the book lacks taken
    from the first of ``catalogues`` (:func:`read_catalogue` frames) that has it."""
    out = books
    for i, catalogue in enumerate(catalogues):
        suffix = f"__{i}"
        out = out.join(catalogue, on="isbn", how="left", suffix=suffix, coalesce=True)
        for column in METADATA_COLUMNS:
            joined = f"{column}{suffix}"
            if joined in out.columns:  # the book side had the column: keep its values first
                out = out.with_columns(pl.coalesce(column, joined).alias(column)).drop(joined)
    return out


# --- Book-Crossing (caserec layout) ---------------------------------------------------------


def _latin1_tsv(path: Path) -> list[list[str]]:
    text = read_bytes(path).decode("latin-1")
    # The source escaped '&' as '&amp;' and a later ';'->tab conversion split such fields.
    text = text.replace("&amp\t", "&amp;")
    rows = [line.rstrip("\t\r").split("\t") for line in text.splitlines() if line.strip()]
    return rows


def _books_crossing_catalogue(path: Path) -> pl.DataFrame:
    rows = _latin1_tsv(path)[1:]
    records = []
    for row in rows:
        if len(row) < 6:
            continue
        # Any extra fields belong to the publisher (broken escaping); URLs are the last three.
        urls = row[-3:] if len(row) >= 9 else ["", "", ""]
        publisher = " ".join(row[5:-3]) if len(row) >= 9 else row[5]
        records.append(
            {
                S.BOOK_ID: row[0],
                "isbn": row[1],
                "title": html.unescape(row[2]),
                "authors": html.unescape(row[3]),
                "year": row[4] if row[4].isdigit() and row[4] != "0" else None,
                "publisher": html.unescape(publisher),
                "image_url": urls[1] or None,
            }
        )
    return pl.DataFrame(records, schema_overrides={"year": pl.String})


def read_book_crossing(path: str | Path) -> Dataset:
    """Book-Crossing in the caserec layout (tab separated, Latin-1).

    ``book_history.dat`` gives implicit interactions; ``book_ratings.dat`` adds explicit 1-10
    ratings; ``items_info.dat`` the catalogue; ``users_info.dat`` location (-> country) and age.
    """
    folder = Path(path)
    history = _latin1_tsv(find_file(folder, "book_history.dat"))  # type: ignore[arg-type]
    inter = pl.DataFrame(history[1:], schema=["user_id", "book_id", "weight"], orient="row")
    ratings_file = find_file(folder, "book_ratings.dat", required=False)
    if ratings_file is not None:
        rated = _latin1_tsv(ratings_file)[1:]
        ratings = pl.DataFrame(rated, schema=["user_id", "book_id", "rating"], orient="row")
        inter = inter.join(ratings, on=["user_id", "book_id"], how="full", coalesce=True)
        inter = inter.with_columns(pl.col("weight").fill_null("1"))
    inter = inter.with_columns(order=pl.int_range(pl.len()).over("user_id"))
    books_file = find_file(folder, "items_info.dat", required=False)
    books = _books_crossing_catalogue(books_file) if books_file else None
    users = None
    users_file = find_file(folder, "users_info.dat", required=False)
    if users_file is not None:
        rows = _latin1_tsv(users_file)[1:]
        raw = pl.DataFrame(
            [[*r, "", "", ""][:3] for r in rows], schema=["user_id", "loc", "age"], orient="row"
        )
        users = raw.select(
            "user_id",
            pl.col("age").str.extract(r"^(\d+)$").cast(pl.Int32, strict=False).alias("age"),
            pl.col("loc").str.split(",").list.last().str.strip_chars().alias("country"),
        ).with_columns(
            pl.when(pl.col("country") == "").then(None).otherwise("country").alias("country")
        )
    source = str(folder / "book_history.dat")
    return build_dataset("book_crossing", inter, books, users, source=source)


# --- Goodbooks-10k --------------------------------------------------------------------------


def _csv(path: Path) -> pl.DataFrame:
    return pl.read_csv(io.BytesIO(read_bytes(path)), infer_schema=False)


MAX_TAGS = 8  # a Goodbooks book's most-used tags kept


def _goodbooks_catalogue(folder: Path, max_tags: int = MAX_TAGS) -> pl.DataFrame:
    """Goodbooks' ``books.csv`` (with its most-used tags when ``book_tags.csv`` and
    ``tags.csv`` are there) in the canonical column names."""
    raw = _csv(find_file(folder, "books.csv"))  # type: ignore[arg-type]
    books = raw.select(
        pl.col("book_id"),
        pl.col("title"),
        pl.col("authors"),
        pl.col("original_publication_year")
        .cast(pl.Float64, strict=False)
        .cast(pl.Int32)
        .alias("year"),
        pl.col("language_code").alias("language"),
        pl.col("image_url"),
        # editions and translations of one book share it (derived when the file lacks it)
        pl.col("work_id") if "work_id" in raw.columns else pl.lit(None, pl.String).alias("work_id"),
        # The source lost leading zeros of ISBN-10s.
        pl.when(pl.col("isbn").str.contains(r"^\d+X?$"))
        .then(pl.col("isbn").str.zfill(10))
        .otherwise(None)
        .alias("isbn"),
    )
    tags_file = find_file(folder, "book_tags.csv", required=False)
    names_file = find_file(folder, "tags.csv", required=False)
    if tags_file is not None and names_file is not None:
        book_tags = _csv(tags_file).join(_csv(names_file), on="tag_id", how="left")
        id_map = raw.select("goodreads_book_id", "book_id")
        top = (
            book_tags.join(id_map, on="goodreads_book_id")
            .with_columns(pl.col("count").cast(pl.Int64))
            .sort(["book_id", "count"], descending=[False, True])
            .group_by("book_id", maintain_order=True)
            .agg(pl.col("tag_name").head(max_tags).alias("tags"))
        )
        books = books.join(top, on="book_id", how="left")
    return books


def read_goodbooks(
    path: str | Path, include_to_read: bool = False, max_tags: int = MAX_TAGS
) -> Dataset:
    """Goodbooks-10k: ``books.csv``, ``ratings.csv`` (1-5), optional ``to_read.csv``,
    ``book_tags.csv`` and ``tags.csv``.

    Args:
        path: folder of the full release (or of the metadata only, for catalogue use).
        include_to_read: add want-to-read shelvings as weak interactions (weight 0.5).
        max_tags: keep each book's most-used tags, at most this many.
    """
    folder = Path(path)
    books = _goodbooks_catalogue(folder, max_tags)
    ratings_file = find_file(folder, "ratings.csv", required=False)
    if ratings_file is None:
        raise DataError(
            f"{folder}: ratings.csv not found — only the Goodbooks metadata is here. "
            "Run `recsys download dataset=goodbooks` for the full release, or use this folder "
            "as a catalogue only."
        )
    inter = _csv(ratings_file).select("user_id", "book_id", pl.col("rating"))
    inter = inter.with_columns(weight=pl.lit(1.0))
    if include_to_read:
        to_read_file = find_file(folder, "to_read.csv", required=False)
        if to_read_file is not None:
            shelved = _csv(to_read_file).select("user_id", "book_id", weight=pl.lit(0.5))
            inter = pl.concat([inter, shelved], how="diagonal")
    return build_dataset("goodbooks", inter, books, None, source=str(ratings_file))


# --- Bring your own data --------------------------------------------------------------------


def read_table(path: str | Path, columns: Mapping[str, str] | None, what: str) -> pl.DataFrame:
    """A CSV/TSV/Parquet table with its columns renamed to the canonical names."""
    file = Path(path)
    if not file.is_file():
        raise DataError(f"{what} file {file} does not exist. Fix the path in the data config.")
    suffixes = [s for s in file.suffixes if s != ".gz"]
    kind = suffixes[-1] if suffixes else ""
    if kind == ".parquet":
        frame = pl.read_parquet(file)
    elif kind in (".csv", ".tsv", ".txt"):
        sep = "\t" if kind in (".tsv", ".txt") else ","
        frame = pl.read_csv(io.BytesIO(read_bytes(file)), separator=sep, infer_schema=False)
    else:
        raise DataError(f"{file}: unsupported format '{kind}'. Use .csv, .tsv or .parquet.")
    if columns:
        missing = [src for src in columns.values() if src not in frame.columns]
        if missing:
            raise DataError(
                f"{file}: column(s) {missing} named in the column mapping are not in the file "
                f"(it has {frame.columns}). Fix data.reader.*_columns."
            )
        frame = frame.rename({src: dst for dst, src in columns.items()})
    return frame


def read_custom(
    interactions: str | Path,
    name: str = "custom",
    books: str | Path | None = None,
    users: str | Path | None = None,
    interaction_columns: Mapping[str, str] | None = None,
    book_columns: Mapping[str, str] | None = None,
    user_columns: Mapping[str, str] | None = None,
) -> Dataset:
    """Bring your own data: interactions (CSV/TSV/Parquet) plus optional catalogue and users.

    Column mappings go from canonical name to the file's name, e.g.
    ``{"user_id": "customer", "book_id": "sku", "timestamp": "ts"}``.
    """
    inter = read_table(interactions, interaction_columns, "interactions")
    book_frame = read_table(books, book_columns, "books") if books else None
    user_frame = read_table(users, user_columns, "users") if users else None
    return build_dataset(name, inter, book_frame, user_frame, source=str(interactions))
