"""The book catalogue: seeded from each bundle, edited through the API, searchable."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import polars as pl
import sqlalchemy as sa

from recsys.data.works import SERIES, SERIES_POSITION, WORK_ID, derive_book_keys
from recsys.stores.engine import Database
from recsys.stores.schema import BOOK_COLUMNS, BOOK_FIELDS, books, reviews


class SqlCatalogueStore:
    """Books by id. Delisting is a soft delete, so re-seeding never lists a book again.

    Search uses SQLite FTS5 when the database is SQLite and a case-insensitive substring
    match elsewhere.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self._lock = threading.Lock()

    def seed_books(self, frame: pl.DataFrame) -> int:
        """Add the bundle's books the catalogue does not have yet (every start: a new bundle
        brings its new books; edits and delistings made through the API are kept). Returns
        rows offered. Processes that start together on one store (workers, replicas) may seed
        the same books at once: a book another one added first is left as it is."""
        with self.db.connect() as conn:
            known = {str(b) for (b,) in conn.execute(sa.select(books.c.book_id))}
        frame = frame.filter(~pl.col("book_id").cast(pl.String).is_in(list(known)))
        now = time.time()
        rows = [_seed_row(r, now) for r in frame.iter_rows(named=True)]
        with self.db.begin() as conn:
            for start in range(0, len(rows), 5000):
                conn.execute(
                    self.db.insert(books).on_conflict_do_nothing(index_elements=["book_id"]),
                    rows[start : start + 5000],
                )
        return len(rows)

    def listed(self, bundle_books: pl.DataFrame) -> pl.DataFrame:
        """Seed with a bundle's books, then return the listed catalogue (what serving shows)."""
        self.seed_books(bundle_books)
        return self.books_frame()

    def books_frame(self) -> pl.DataFrame:
        """The listed catalogue: book_id, title, authors, year, language, and works and
        series (work_id, series, series_position)."""
        schema = {
            "book_id": pl.String,
            "title": pl.String,
            "authors": pl.String,
            "year": pl.Int64,
            "language": pl.String,
            "work_id": pl.String,
            "series": pl.String,
            "series_position": pl.Float64,
        }
        query = sa.select(*(books.c[name] for name in schema)).where(books.c.deleted == sa.false())
        with self.db.connect() as conn:
            rows = conn.execute(query).all()
        return pl.DataFrame([tuple(r) for r in rows], schema=schema, orient="row")

    def added_books(self) -> list[dict[str, Any]]:
        """Listed books created through the API (no bundle has them until retraining)."""
        query = sa.select(books).where(books.c.origin == "api", books.c.deleted == sa.false())
        with self.db.connect() as conn:
            return [_book(r) for r in conn.execute(query)]

    def book(self, book_id: str) -> dict[str, Any] | None:
        """A listed book (None when absent or delisted)."""
        query = sa.select(books).where(books.c.book_id == book_id, books.c.deleted == sa.false())
        with self.db.connect() as conn:
            row = conn.execute(query).first()
        return _book(row) if row is not None else None

    def put_book(self, book_id: str, fields: dict[str, Any], create: bool) -> dict[str, Any]:
        """Create (``create``; KeyError if it is listed) or update (LookupError if it is not)
        a book; returns it."""
        values = {k: fields[k] for k in BOOK_FIELDS if k in fields}
        if "tags" in values:
            values["tags"] = json.dumps(list(values["tags"] or []))
        values["updated_at"] = time.time()
        with self._lock, self.db.begin() as conn:
            row = conn.execute(sa.select(books).where(books.c.book_id == book_id)).first()
            before = dict(row._mapping) if row is not None and not create else {}
            values.update(derived_keys(book_id, {**before, **values}, before))
            listed = row is not None and not row.deleted
            if create and listed:
                raise KeyError(book_id)
            if not create and not listed:
                raise LookupError(book_id)
            if row is None:
                conn.execute(books.insert().values(book_id=book_id, origin="api", **values))
            else:  # an update, or a delisted book listed again
                conn.execute(
                    sa.update(books)
                    .where(books.c.book_id == book_id)
                    .values(deleted=False, **values)
                )
        book = self.book(book_id)
        assert book is not None
        return book

    def delete_book(self, book_id: str) -> bool:
        """Delist a book (kept as delisted, so re-seeding never lists it again)."""
        query = (
            sa.update(books)
            .where(books.c.book_id == book_id, books.c.deleted == sa.false())
            .values(deleted=True, updated_at=time.time())
        )
        with self.db.begin() as conn:
            return bool(conn.execute(query).rowcount)

    def put_review(
        self, book_id: str, user_id: str, rating: int, text: str
    ) -> tuple[dict[str, Any], bool]:
        """Create or replace the reader's review of the book (one per reader and book);
        returns it and whether it is new."""
        now = time.time()
        key = (reviews.c.user_id == user_id) & (reviews.c.book_id == book_id)
        # an upsert: two replicas writing the first review at once do not collide
        upsert = (
            self.db.insert(reviews)
            .values(
                user_id=user_id,
                book_id=book_id,
                rating=rating,
                text=text,
                created_at=now,
                updated_at=now,
            )
            .on_conflict_do_update(
                index_elements=["user_id", "book_id"],
                set_={"rating": rating, "text": text, "updated_at": now},
            )
        )
        with self.db.begin() as conn:
            conn.execute(upsert)
            row = conn.execute(sa.select(reviews).where(key)).one()
        return dict(row._mapping), row.created_at == now

    def reviews(self, book_id: str, limit: int) -> tuple[list[dict[str, Any]], int, float | None]:
        """The book's latest reviews (newest first, at most ``limit``), how many it has and
        their average rating."""
        with self.db.connect() as conn:
            count, average = conn.execute(
                sa.select(sa.func.count(), sa.func.avg(reviews.c.rating)).where(
                    reviews.c.book_id == book_id
                )
            ).one()
            rows = conn.execute(
                sa.select(reviews)
                .where(reviews.c.book_id == book_id)
                .order_by(reviews.c.updated_at.desc(), reviews.c.user_id)
                .limit(limit)
            ).all()
        mean = None if average is None else round(float(average), 3)
        return [dict(r._mapping) for r in rows], int(count), mean

    def delete_review(self, book_id: str, user_id: str) -> bool:
        key = (reviews.c.user_id == user_id) & (reviews.c.book_id == book_id)
        with self.db.begin() as conn:
            return bool(conn.execute(sa.delete(reviews).where(key)).rowcount)

    def search_books(self, query: str, limit: int = 20) -> list[dict[str, Any]]:
        """Books whose title or authors match ``query`` (every word, prefix match), best first."""
        words = [w for w in "".join(c if c.isalnum() else " " for c in query).split() if w]
        if not words:
            return []
        with self.db.connect() as conn:
            if self.db.is_sqlite:
                match = " ".join(f'"{w}"*' for w in words)
                rows = conn.exec_driver_sql(
                    "SELECT b.* FROM books_fts f JOIN books b ON b.book_id = f.book_id "
                    "WHERE books_fts MATCH ? AND NOT b.deleted ORDER BY bm25(books_fts) LIMIT ?",
                    (match, limit),
                ).all()
            else:
                text = sa.func.lower(
                    sa.func.coalesce(books.c.title, "")
                    + " "
                    + sa.func.coalesce(books.c.authors, "")
                )
                condition = sa.and_(*(text.contains(w.lower()) for w in words))
                listed = books.c.deleted == sa.false()
                rows = conn.execute(sa.select(books).where(condition, listed).limit(limit)).all()
        return [_book(r) for r in rows]


def _seed_row(r: dict[str, Any], now: float) -> dict[str, Any]:
    return {
        "book_id": str(r["book_id"]),
        "title": r.get("title"),
        "authors": r.get("authors"),
        "year": r.get("year"),
        "publisher": r.get("publisher"),
        "language": r.get("language"),
        "tags": json.dumps(list(r.get("tags") or [])),
        "cover_url": r.get("cover_url") or r.get("image_url"),
        "series": r.get("series"),
        "series_position": r.get("series_position"),
        "work_id": r.get("work_id"),
        "updated_at": now,
        "origin": "bundle",
        "deleted": False,
    }


def _book(row: Any) -> dict[str, Any]:
    out = {k: v for k, v in row._mapping.items() if k in BOOK_COLUMNS}
    out["tags"] = json.loads(out.get("tags") or "[]")
    return out


def derived_keys(
    book_id: str, fields: dict[str, Any], before: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``work_id``, ``series`` and ``series_position`` for a book written through the API: as
    given; else as the book had them (``before``, an update that leaves them alone); else
    derived from its title and authors as the data readers derive them."""
    before = before or {}
    row = {"book_id": book_id, "title": fields.get("title"), "authors": fields.get("authors")}
    row.update({k: fields.get(k) for k in (SERIES, SERIES_POSITION, WORK_ID)})
    if fields.get(WORK_ID) is None and before.get(WORK_ID):
        row[WORK_ID] = before[WORK_ID]
    if before and before.get(WORK_ID) is None and fields.get(WORK_ID) is None:
        # a row seeded before the catalogue kept works: serving reads the bundle's keys for
        # it, which an edit that does not name them must not replace with derived ones
        return {
            SERIES: fields.get(SERIES),
            SERIES_POSITION: fields.get(SERIES_POSITION),
            WORK_ID: None,
        }
    frame = pl.DataFrame(
        [row],
        schema={
            "book_id": pl.String,
            "title": pl.String,
            "authors": pl.String,
            SERIES: pl.String,
            SERIES_POSITION: pl.Float32,
            WORK_ID: pl.String,
        },
    )
    keys = derive_book_keys(frame).row(0, named=True)
    position = keys[SERIES_POSITION]
    return {
        SERIES: keys[SERIES],
        SERIES_POSITION: None if position is None else float(position),
        WORK_ID: keys[WORK_ID],
    }
