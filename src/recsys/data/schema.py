"""The canonical tables every reader produces. One source of truth for names and dtypes.

interactions
    user_id    str      the dataset's own user id
    book_id    str      the dataset's own book id
    weight     f32      implicit strength (1.0 for a plain interaction)
    rating     f32|null explicit rating when the source has one (e.g. 1-10 or 1-5)
    timestamp  i64|null unix seconds, when known
    order      i64|null position in the user's history when there are no timestamps

books
    book_id str, title str|null, authors str|null (comma separated), year i32|null,
    publisher str|null, language str|null, tags list[str] (may be empty), image_url str|null,
    isbn str|null, series str|null, series_position f32|null (both or neither), work_id str
    (editions of one work share it; derived when the source has none, see
    ``recsys.data.works``)

users
    user_id str, age i32|null, country str|null
"""

from __future__ import annotations

import polars as pl

from recsys.errors import DataError

USER_ID = "user_id"
BOOK_ID = "book_id"
WEIGHT = "weight"
RATING = "rating"
TIMESTAMP = "timestamp"
ORDER = "order"

# a reader's "not for me" on a book (the stores' not_interested and dislike events): retraining
# leaves the pair out of the positives and trains on it as a negative
MARKS_SCHEMA: dict[str, pl.DataType] = {USER_ID: pl.String(), BOOK_ID: pl.String()}
INTERACTIONS_SCHEMA: dict[str, pl.DataType] = {
    USER_ID: pl.String(),
    BOOK_ID: pl.String(),
    WEIGHT: pl.Float32(),
    RATING: pl.Float32(),
    TIMESTAMP: pl.Int64(),
    ORDER: pl.Int64(),
}
INTERACTIONS_REQUIRED = (USER_ID, BOOK_ID)

BOOKS_SCHEMA: dict[str, pl.DataType] = {
    BOOK_ID: pl.String(),
    "title": pl.String(),
    "authors": pl.String(),
    "year": pl.Int32(),
    "publisher": pl.String(),
    "language": pl.String(),
    "tags": pl.List(pl.String()),
    "image_url": pl.String(),
    "isbn": pl.String(),
    "series": pl.String(),
    "series_position": pl.Float32(),
    "work_id": pl.String(),
}
BOOKS_REQUIRED = (BOOK_ID,)

USERS_SCHEMA: dict[str, pl.DataType] = {
    USER_ID: pl.String(),
    "age": pl.Int32(),
    "country": pl.String(),
}
USERS_REQUIRED = (USER_ID,)


def conform(
    frame: pl.DataFrame,
    schema: dict[str, pl.DataType],
    required: tuple[str, ...],
    source: str,
) -> pl.DataFrame:
    """Check required columns, cast to the canonical dtypes and add missing optional columns.

    Args:
        frame: the table as read.
        schema: the canonical schema (column -> dtype).
        required: columns that must be present.
        source: file or table name used in error messages.

    Returns:
        A frame with exactly the schema's columns, in schema order.

    Raises:
        DataError: a required column is missing or a column cannot be cast.
    """
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataError(
            f"{source}: missing column(s) {missing}; found {frame.columns}. "
            "Rename them or set the column mapping in the data config (data.columns)."
        )
    columns = []
    for name, dtype in schema.items():
        if name not in frame.columns:
            columns.append(pl.lit(None, dtype=dtype).alias(name))
            continue
        col = frame.get_column(name)
        if col.dtype == dtype:
            columns.append(pl.col(name))
            continue
        try:
            frame.select(_cast(name, col.dtype, dtype))
        except (pl.exceptions.InvalidOperationError, pl.exceptions.ComputeError) as exc:
            raise DataError(
                f"{source}: column '{name}' has type {col.dtype} and cannot be read as {dtype} "
                f"({str(exc).splitlines()[0]}). Fix the values or map another column."
            ) from None
        columns.append(_cast(name, col.dtype, dtype))
    out = frame.select(columns)
    return out


def _cast(name: str, have: pl.DataType, want: pl.DataType) -> pl.Expr:
    expr = pl.col(name)
    if want == pl.String() and have != pl.String():
        return expr.cast(pl.String).alias(name)
    if isinstance(want, pl.List) and have == pl.String():
        return expr.str.split("|").alias(name)
    if have == pl.String() and want.is_numeric():
        # Strict: "abc" in a numeric column is an error, but "" means missing.
        expr = pl.when(expr.str.strip_chars() == "").then(None).otherwise(expr.str.strip_chars())
        if want.is_integer():
            return expr.cast(pl.Float64, strict=True).cast(want, strict=True).alias(name)
    return expr.cast(want, strict=True).alias(name)


def require_rows(frame: pl.DataFrame, source: str) -> None:
    """Raise a DataError when a table that must have rows is empty."""
    if frame.height == 0:
        raise DataError(f"{source}: no rows. Check the path in the data config and the file.")
