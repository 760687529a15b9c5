"""Works and series: which books are editions of one work, and which are volumes of a series.

Every reader's catalogue passes through :func:`derive_book_keys` (from ``build_dataset``):

- ``series`` / ``series_position``: kept when the source gives them (synthetic data, a custom
  catalogue's columns); otherwise read from a Goodreads-style title suffix,
  ``"Catching Fire (The Hunger Games, #2)"`` -> ``"The Hunger Games"``, ``2``. Omnibus
  volumes (``#1-3``) are not positions and stay out of the series.
- ``work_id``: kept when the source gives it (Goodbooks' ``work_id``); otherwise ``t:`` and
  the normalised title (series suffix and any bracketed note such as ``(Spanish Edition)``
  dropped, accents folded, letters and digits only) with the first author's normalised name,
  so two ISBNs of one book share it; a book with no title is its own work (``b:`` and its
  id).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import polars as pl

from recsys.features.vocab import NUM_RESERVED

SERIES = "series"
SERIES_POSITION = "series_position"
WORK_ID = "work_id"

# "(Series Name, #3)" or "(Series Name #3.5)" at the end of a title
SERIES_IN_TITLE = r"\(\s*([^()]*?[^\s,()])\s*,?\s+#(\d+(?:\.\d+)?)\s*\)\s*$"
BRACKETED = r"\([^()]*\)|\[[^\[\]]*\]"


def _folded(expr: pl.Expr) -> pl.Expr:
    """Lower case, accents folded, runs of anything but letters and digits to one space."""
    return (
        expr.str.normalize("NFKD")
        .str.replace_all(r"\p{M}", "")
        .str.to_lowercase()
        .str.replace_all(r"[^\p{L}\p{N}]+", " ")
        .str.strip_chars()
    )


def derive_book_keys(books: pl.DataFrame) -> pl.DataFrame:
    """Fill ``series``, ``series_position`` and ``work_id`` where the source left them empty
    (see the module docstring); columns the frame lacks are added."""
    for name, dtype in ((SERIES, pl.String), (SERIES_POSITION, pl.Float32), (WORK_ID, pl.String)):
        if name not in books.columns:
            books = books.with_columns(pl.lit(None, dtype=dtype).alias(name))
    title = pl.col("title").fill_null("")
    parsed = title.str.extract_groups(SERIES_IN_TITLE)
    given = pl.col(SERIES).str.strip_chars()
    has_series = given.is_not_null() & (given != "") & pl.col(SERIES_POSITION).is_not_null()
    books = books.with_columns(
        pl.when(has_series).then(given).otherwise(parsed.struct.field("1")).alias(SERIES),
        pl.when(has_series)
        .then(pl.col(SERIES_POSITION))
        .otherwise(parsed.struct.field("2").cast(pl.Float32, strict=False))
        .alias(SERIES_POSITION),
    )
    # a position without a series (or the reverse) says nothing: both or neither
    complete = pl.col(SERIES).is_not_null() & pl.col(SERIES_POSITION).is_not_null()
    books = books.with_columns(
        pl.when(complete).then(pl.col(SERIES)).otherwise(None).alias(SERIES),
        pl.when(complete).then(pl.col(SERIES_POSITION)).otherwise(None).alias(SERIES_POSITION),
    )
    folded = _folded(title.str.replace(SERIES_IN_TITLE, "").str.replace_all(BRACKETED, " "))
    author = _folded(pl.col("authors").fill_null("").str.split(",").list.first().fill_null(""))
    derived = (
        pl.when(folded != "")
        .then(pl.lit("t:") + folded + pl.lit("|") + author.str.replace_all(" ", ""))
        .otherwise(pl.lit("b:") + pl.col("book_id").cast(pl.String))
    )
    given_work = pl.col(WORK_ID).cast(pl.String).str.strip_chars()
    return books.with_columns(
        pl.when(given_work.is_not_null() & (given_work != ""))
        .then(given_work)
        .otherwise(derived)
        .alias(WORK_ID)
    )


class Works:
    """Works and series by book index (the vocabulary's order, reserved rows included).

    Args:
        ids: book id of each index (None for the reserved rows).
        books: a catalogue frame with ``book_id`` and, when known, ``work_id``, ``series``,
            ``series_position``. Books it lacks (or all of them, for a frame without those
            columns, e.g. a bundle written before them) are each their own work, in no series.
    """

    def __init__(self, ids: Iterable[str | None], books: pl.DataFrame) -> None:
        keys = [c for c in (WORK_ID, SERIES, SERIES_POSITION) if c in books.columns]
        table = books.select(pl.col("book_id").cast(pl.String), *keys).unique(
            "book_id", keep="first"
        )
        known = {row["book_id"]: row for row in table.to_dicts()}
        self._work_index: dict[str, int] = {}
        self._series_index: dict[str, int] = {}
        self.series_names: list[str] = []
        self._work: list[int] = []
        self._series: list[int] = []
        self._position: list[float] = []
        self._volumes: dict[int, list[int]] = {}
        self._editions: dict[int, list[int]] = {}
        self._lock = threading.Lock()  # writers (catalogue edits); readers never wait
        self._changes = 0  # appends and updates: when the arrays below are stale
        self._arrays: tuple[int, np.ndarray, np.ndarray] | None = None
        for book_id in ids:
            self.append(known.get(book_id, {"book_id": book_id}))

    def __getstate__(self) -> dict[str, Any]:
        """Pickled without its lock (sent to Ray Train workers with the serving stage)."""
        state = dict(self.__dict__)
        state.pop("_lock")
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @classmethod
    def of_vocabulary(cls, ids: Iterable[str], books: pl.DataFrame) -> Works:
        """Works over a book vocabulary's indices (``ids`` in index order, after the
        reserved rows)."""
        return cls([None] * NUM_RESERVED + list(ids), books)

    @property
    def has_series(self) -> bool:
        return bool(self.series_names)

    def __len__(self) -> int:
        return len(self._work)

    def work_of(self, book: int) -> int:
        return self._work[book]

    def series_of(self, book: int) -> int:
        """The book's series index, -1 when it is in none."""
        return self._series[book]

    def position_of(self, book: int) -> float:
        return self._position[book]

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(work, series) of every index as int64 arrays (series -1: none), for vectorised
        checks over many books; rebuilt after an edit."""
        cached = self._arrays
        if cached is not None and cached[0] == self._changes:
            return cached[1], cached[2]
        changes = self._changes
        size = len(self._work)  # ``_series`` is appended first: it holds at least as many
        work = np.array(self._work[:size], dtype=np.int64)
        series = np.array(self._series[:size], dtype=np.int64)
        self._arrays = (changes, work, series)
        return work, series

    def append(self, row: Mapping[str, Any]) -> int:
        """A new index with ``row``'s work and series; returns the index."""
        with self._lock:
            index = len(self._work)
            work, series, position = self._keys(index, row)
            # readers see the index once ``_work`` holds it: everything else is set first
            self._series.append(series)
            self._position.append(position)
            self._link(index, work, series)
            self._work.append(work)
            self._changes += 1
            return index

    def update(self, index: int, row: Mapping[str, Any]) -> None:
        """Index ``index`` takes ``row``'s work and series (a catalogue edit)."""
        with self._lock:
            work, series, position = self._keys(index, row)
            old_work, old_series = self._work[index], self._series[index]
            # new lists swapped in whole: a reader never sees one half-changed
            if old_series >= 0:
                self._volumes[old_series] = [b for b in self._volumes[old_series] if b != index]
            self._editions[old_work] = [b for b in self._editions[old_work] if b != index]
            self._series[index], self._position[index] = series, position
            self._work[index] = work
            self._link(index, work, series)
            self._changes += 1

    def _keys(self, index: int, row: Mapping[str, Any]) -> tuple[int, int, float]:
        """(work, series, position) of ``row``, new work and series indices made as needed."""
        book_id = row.get("book_id")
        key = row.get(WORK_ID) or (f"b:{book_id}" if book_id is not None else f"#{index}")
        work = self._work_index.setdefault(str(key), len(self._work_index))
        name, position = row.get(SERIES), row.get(SERIES_POSITION)
        try:
            place = float(position) if position is not None else float("nan")
        except (TypeError, ValueError):
            place = float("nan")
        if not name or not np.isfinite(place):
            return work, -1, float("nan")
        series = self._series_index.get(str(name))
        if series is None:
            series = self._series_index[str(name)] = len(self.series_names)
            self.series_names.append(str(name))
        return work, series, place

    def _link(self, index: int, work: int, series: int) -> None:
        self._editions[work] = [*self._editions.get(work, []), index]
        if series >= 0:
            volumes = [*self._volumes.get(series, []), index]
            self._volumes[series] = sorted(volumes, key=lambda b: (self._position[b], b))

    def editions(self, books: Iterable[int]) -> set[int]:
        """``books`` and every other edition of their works."""
        out: set[int] = set()
        for book in books:
            if 0 <= book < len(self._work):
                out.update(self._editions.get(self._work[book], [book]))
            else:
                out.add(book)
        return out

    def volumes(self, series: int) -> list[int]:
        """The series' books in reading order (by position; editions of a volume together)."""
        return self._volumes.get(series, [])

    def works_read(self, history: Iterable[int]) -> set[int]:
        """The works of the books in ``history`` (any edition read counts)."""
        work = self._work
        return {work[b] for b in history if 0 <= b < len(work)}

    def first_open_volume(
        self, series: int, read: set[int], offerable: Callable[[int], bool]
    ) -> int | None:
        """The earliest volume of ``series`` whose work is unread and that ``offerable``
        allows (listed, not filtered or excluded); None when there is none."""
        work = self._work
        for book in self.volumes(series):
            if book < len(work) and work[book] not in read and offerable(book):
                return book
        return None

    def next_volumes(self, history: Iterable[int], limit: int) -> list[int]:
        """ "Next in series": for each series the reader has read a volume of, its earliest
        unread volume (any edition: the first in reading order), the series most recently
        read from first (the history's last books), at most ``limit``."""
        read = self.works_read(history)
        out: list[int] = []
        started: list[int] = []
        for book in reversed(list(history)):
            series = self._series[book] if 0 <= book < len(self._series) else -1
            if series >= 0 and series not in started:
                started.append(series)
        for series in started:
            volume = self.first_open_volume(series, read, lambda _b: True)
            if volume is not None:
                out.append(volume)
                if len(out) == limit:
                    break
        return out
