"""The live catalogue by vocabulary index: book metadata for filters and responses."""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from recsys.bundle.reader import Bundle
from recsys.data.works import SERIES, SERIES_POSITION, WORK_ID, Works
from recsys.features.vocab import NUM_RESERVED
from recsys.serving.schemas import Filters


class Catalogue:
    """Book metadata by vocabulary index, for filters and responses.

    ``books`` is the live catalogue (the store's, when serving has one; the bundle's
    otherwise). Model books missing from it were removed from the catalogue: never
    recommended.
    """

    def __init__(self, bundle: Bundle, books: pl.DataFrame | None = None) -> None:
        vocab = bundle.state.books
        table = bundle.books if books is None else books
        present = pl.DataFrame({"book_id": vocab.ids}).join(
            table.select("book_id").with_columns(present=pl.lit(True)),
            on="book_id",
            how="left",
            maintain_order="left",
        )
        frame = pl.DataFrame({"book_id": vocab.ids}).join(
            table, on="book_id", how="left", maintain_order="left"
        )
        pad: list[Any] = [None] * NUM_RESERVED
        self.index = {b: i + NUM_RESERVED for i, b in enumerate(vocab.ids.to_list())}
        self.ids: list[str | None] = pad + vocab.ids.to_list()
        self.titles: list[str | None] = pad + frame.get_column("title").to_list()
        self.authors: list[str | None] = pad + frame.get_column("authors").to_list()
        years = frame.get_column("year").fill_null(-1).to_numpy()
        self.years = np.concatenate([[-1] * NUM_RESERVED, years])
        self.languages = np.array(pad + frame.get_column("language").to_list(), dtype=object)
        self.listed = np.concatenate(
            [[False] * NUM_RESERVED, present.get_column("present").fill_null(False).to_numpy()]
        )
        # works and series: the live catalogue's, the bundle's where it has none (rows seeded
        # before the catalogue kept them)
        self.works = Works(self.ids, book_keys(table, bundle.books))
        self.generation = 0  # counts edits (rules' filter masks are made again after one)
        # books removed from the catalogue (kept current by update/remove; read per request)
        self.delisted = int((~self.listed[NUM_RESERVED:]).sum())

    def update(self, book: dict[str, Any]) -> None:
        """A catalogue edit (create or update) of a book the model knows."""
        index = self.index.get(str(book["book_id"]))
        if index is None:
            return
        self.titles[index], self.authors[index] = book.get("title"), book.get("authors")
        year = book.get("year")
        self.years[index] = -1 if year is None else int(year)
        self.languages[index] = book.get("language")
        self.works.update(index, book)
        self.listed[index] = True
        self.generation += 1
        self.delisted = int((~self.listed[NUM_RESERVED:]).sum())

    def add(self, book: dict[str, Any]) -> int:
        """Append a book the model never saw; returns its index."""
        index = len(self.ids)
        self.index[str(book["book_id"])] = index
        self.ids.append(str(book["book_id"]))
        self.titles.append(book.get("title"))
        self.authors.append(book.get("authors"))
        year = book.get("year")
        self.years = np.append(self.years, -1 if year is None else int(year))
        self.languages = np.append(self.languages, np.array([book.get("language")], dtype=object))
        self.listed = np.append(self.listed, True)
        self.works.append(book)
        self.generation += 1
        return index

    def remove(self, book_id: str) -> None:
        index = self.index.get(book_id)
        if index is not None:
            self.listed[index] = False
            self.generation += 1
            self.delisted = int((~self.listed[NUM_RESERVED:]).sum())

    def allowed(self, filters: Filters | None, exclude: set[int]) -> np.ndarray | None:
        """Bool per book index, or None when nothing is filtered."""
        if filters is None and not exclude and not self.delisted:
            return None
        mask = self.listed.copy()
        mask[:NUM_RESERVED] = False
        if exclude:
            mask[list(exclude)] = False
        if filters is not None:
            mask &= self.matching(
                len(mask),
                filters.languages or None,
                filters.authors or None,
                filters.year_min,
                filters.year_max,
            )
        return mask

    def matching(
        self,
        size: int,
        languages: list[str] | None = None,
        authors: list[str] | None = None,
        year_min: int | None = None,
        year_max: int | None = None,
    ) -> np.ndarray:
        """Bool per book index (the first ``size``): books of these languages, by one of
        these authors (substring, any case), in these years; None leaves a field unchecked.
        The one definition request filters and the business rules' filters share."""
        mask = np.ones(size, dtype=bool)
        if languages is not None:
            mask &= np.isin(self.languages[:size], languages)
        if authors is not None:
            wanted = [a.lower() for a in authors]
            mask &= np.array(
                [
                    a is not None and any(w in a.lower() for w in wanted)
                    for a in self.authors[:size]
                ],
                dtype=bool,
            )
        if year_min is not None:
            mask &= self.years[:size] >= year_min
        if year_max is not None:
            mask &= (self.years[:size] >= 0) & (self.years[:size] <= year_max)
        return mask


def book_keys(live: pl.DataFrame, bundled: pl.DataFrame) -> pl.DataFrame:
    """``book_id``, ``work_id``, ``series``, ``series_position`` of the live catalogue, each
    missing value taken from the bundle's catalogue (series and position as a pair)."""
    keys = (WORK_ID, SERIES, SERIES_POSITION)
    if live is bundled:
        return live
    out = live.select(pl.col("book_id").cast(pl.String), *[c for c in keys if c in live.columns])
    for name, dtype in ((WORK_ID, pl.String), (SERIES, pl.String), (SERIES_POSITION, pl.Float64)):
        if name not in out.columns:
            out = out.with_columns(pl.lit(None, dtype=dtype).alias(name))
    present = [c for c in keys if c in bundled.columns]
    if not present:
        return out
    theirs = bundled.select(
        pl.col("book_id").cast(pl.String), *[pl.col(c).alias(f"{c}_bundle") for c in present]
    ).unique("book_id", keep="first")
    # every bundle book keeps its keys, delisted ones too (a reader may have read one)
    out = out.join(theirs, on="book_id", how="full", coalesce=True, maintain_order="left")
    fill = [pl.coalesce(WORK_ID, f"{WORK_ID}_bundle").alias(WORK_ID)] if WORK_ID in present else []
    if SERIES in present and SERIES_POSITION in present:
        own = pl.col(SERIES).is_not_null()
        fill += [
            pl.when(own).then(pl.col(SERIES)).otherwise(pl.col(f"{SERIES}_bundle")).alias(SERIES),
            pl.when(own)
            .then(pl.col(SERIES_POSITION))
            .otherwise(pl.col(f"{SERIES_POSITION}_bundle").cast(pl.Float64))
            .alias(SERIES_POSITION),
        ]
    return out.with_columns(fill).select("book_id", *keys)
