"""Retraining, the library side of ``recsys retrain`` (docs/training.md#retraining).

The base dataset plus every stored history event (erased users left out) is the candidate's
data; the events after the production bundle's data cut-off are what is *new*. After training,
the candidate and production are scored on the same holdout (:mod:`recsys.lifecycle.holdout`,
:mod:`recsys.lifecycle.compare`), the gate decides (:mod:`recsys.lifecycle.gate`) and the
outcome goes to the model registry (:func:`register_outcome`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import polars as pl

from recsys.bundle.manifest import Manifest
from recsys.data import schema as S
from recsys.data.io import Dataset, build_dataset
from recsys.lifecycle.compare import HoldoutScore
from recsys.lifecycle.gate import GateResult
from recsys.lifecycle.records import epoch
from recsys.lifecycle.registry import Registry
from recsys.report import print_table
from recsys.stores import Stores
from recsys.stores.schema import AUTHOR_EVENT_TYPES, EXCLUDING_EVENT_TYPES

ACTOR = "retrain"
RATE = "rate"  # the event type whose value is a rating


@dataclass(frozen=True)
class RetrainData:
    """What a retrain trains and judges on.

    Attributes:
        dataset: the base dataset plus every stored history event, erased users left out.
        stored_events: history events read from the store.
        new_events: of those, the events after the production bundle's cut-off.
        cutoff: that cut-off (unix seconds); None without a production bundle.
        new_books: books of stored events that the base data does not have (kept: they get
            id embeddings, and the catalogue's metadata when added through the API).
        erased_users: users of stored events left out because they were erased (the base
            data's erased users were left out when it was prepared).
        new_marks: of the stored marks, those after the cut-off (new data too).
        marks: negatives from the readers' standing marks: books marked ``not_interested``
            or ``dislike`` (their pairs are no positives, even when the book was read) and,
            for ``less_of_author``, up to :data:`AUTHOR_BOOKS` unread books by that author.
    """

    dataset: Dataset
    stored_events: int
    new_events: int
    cutoff: float | None
    new_books: int
    erased_users: int
    marks: int = 0
    new_marks: int = 0

    def facts(self) -> dict[str, Any]:
        inter = self.dataset.interactions
        return {
            "interactions": inter.height,
            "users": inter.get_column(S.USER_ID).n_unique(),
            "books": inter.get_column(S.BOOK_ID).n_unique(),
            "stored_events": self.stored_events,
            "new_events": self.new_events,
            "cutoff": self.cutoff,
            "new_books": self.new_books,
            "erased_users": self.erased_users,
            "marks": self.marks,
            "new_marks": self.new_marks,
        }


def production_cutoff(manifest: Manifest) -> float:
    """The time up to which a bundle's data goes: its ``data_cutoff``, or when the bundle was
    built for bundles (and data) without one."""
    if manifest.data_cutoff is not None:
        return float(manifest.data_cutoff)
    return epoch(manifest.created_at)


def with_stored_events(base: Dataset, stores: Stores, cutoff: float | None) -> RetrainData:
    """``base`` plus every history event of ``stores``, erased users left out.

    Events become interactions of weight 1 (a ``rate`` event's value is its rating) at their
    time; a (user, book) pair seen again is merged as every reader merges duplicates (weights
    summed, the latest time kept). Books added through the API bring their metadata. The
    readers' standing book marks (not interested, disliked) become the dataset's ``marks``,
    negatives of the next training, and their (user, book) pairs leave the positives: a book
    read and then disliked teaches the model nothing to repeat. A "less of this author" mark
    adds the author's unread books (:func:`by_author`) as negatives, positives untouched.

    Args:
        base: the base dataset (``load_or_prepare``'s tables).
        stores: the serving store (the null set where there is none).
        cutoff: the production bundle's cut-off; events after it count as new.
    """
    events = stores.events.history_frame()
    erased = stores.users.deleted_filter(events.get_column(S.USER_ID).unique())
    events = events.filter(~pl.col(S.USER_ID).is_in(list(erased)))
    interactions = pl.concat(
        [base.interactions, event_interactions(events)], how="vertical_relaxed"
    )
    stored = stores.events.marks_frame()
    erased_marks = stores.users.deleted_filter(stored.get_column(S.USER_ID).unique())
    stored = stored.filter(~pl.col(S.USER_ID).is_in(list(erased_marks)))
    book_marks = stored.filter(pl.col("type").is_in(EXCLUDING_EVENT_TYPES))
    book_marks = book_marks.select(list(S.MARKS_SCHEMA)).unique(maintain_order=True)
    interactions = interactions.join(book_marks, on=[S.USER_ID, S.BOOK_ID], how="anti")
    books = pl.concat([base.books, added_books(stores)], how="diagonal_relaxed")
    dataset = build_dataset(base.name, interactions, books, base.users, "base data + events")
    author_marks = by_author(
        stored.filter(pl.col("type").is_in(AUTHOR_EVENT_TYPES)), dataset.books, dataset.interactions
    )
    # book marks last: the training keeps each reader's last 16 (lightning.retrieval)
    marks = pl.concat([author_marks, book_marks]).unique(maintain_order=True)
    dataset = replace(dataset, marks=marks)
    known = base.interactions.get_column(S.BOOK_ID).unique()
    new_books = (~events.get_column(S.BOOK_ID).unique().is_in(known)).sum()
    # interaction times are whole seconds, and so is a cut-off taken from them; a read since
    # disliked is not in the data, so it is not new either (else it would be new for ever)
    kept = events.join(book_marks, on=[S.USER_ID, S.BOOK_ID], how="anti")
    after = pl.col("ts").floor() > cutoff
    new = kept.height if cutoff is None else kept.filter(after).height
    new_marks = stored.height if cutoff is None else stored.filter(after).height
    return RetrainData(
        dataset,
        events.height,
        new,
        cutoff,
        int(new_books),
        len(erased),
        marks.height,
        new_marks,
    )


AUTHOR_BOOKS = 8  # books of an author a "less of this author" mark makes negatives


def by_author(marks: pl.DataFrame, books: pl.DataFrame, interactions: pl.DataFrame) -> pl.DataFrame:
    """``(user_id, book_id)`` pairs for "less of this author" marks: up to
    :data:`AUTHOR_BOOKS` books (catalogue order) the reader has not read (``interactions``)
    by the marked book's author (the same ``authors`` text, as serving matches it), the
    marked book first."""
    if marks.height == 0:
        return pl.DataFrame(schema=S.MARKS_SCHEMA)
    catalogue = books.select(S.BOOK_ID, "authors").filter(
        pl.col("authors").is_not_null() & (pl.col("authors").str.strip_chars() != "")
    )
    marked = marks.select(S.USER_ID, S.BOOK_ID).join(catalogue, on=S.BOOK_ID)
    marked = marked.rename({S.BOOK_ID: "marked"})
    pairs = marked.join(catalogue, on="authors").with_columns(
        (pl.col(S.BOOK_ID) != pl.col("marked")).alias("_other")
    )
    pairs = pairs.join(
        interactions.select(S.USER_ID, S.BOOK_ID), on=[S.USER_ID, S.BOOK_ID], how="anti"
    )
    pairs = pairs.sort([S.USER_ID, "marked", "_other"], maintain_order=True)
    pairs = pairs.group_by([S.USER_ID, "marked"], maintain_order=True).head(AUTHOR_BOOKS)
    return pairs.select(list(S.MARKS_SCHEMA)).unique(maintain_order=True)


def event_interactions(events: pl.DataFrame) -> pl.DataFrame:
    """Stored history events as canonical interactions (``stores.events.history_frame``)."""
    rating = pl.when(pl.col("type") == RATE).then(pl.col("value")).otherwise(None)
    return events.select(
        pl.col(S.USER_ID),
        pl.col(S.BOOK_ID),
        pl.lit(1.0, dtype=pl.Float32).alias(S.WEIGHT),
        rating.cast(pl.Float32).alias(S.RATING),
        pl.col("ts").floor().cast(pl.Int64).alias(S.TIMESTAMP),
        pl.lit(None, dtype=pl.Int64).alias(S.ORDER),
    )


def added_books(stores: Stores) -> pl.DataFrame:
    """Books added through the API (their metadata), in the canonical books schema."""
    rows = stores.catalogue.added_books()
    if not rows:
        return pl.DataFrame(schema=S.BOOKS_SCHEMA)
    frame = pl.DataFrame(rows).rename({"cover_url": "image_url"}, strict=False)
    return S.conform(frame, S.BOOKS_SCHEMA, S.BOOKS_REQUIRED, "catalogue store")


def unchanged(production: Manifest, data: RetrainData, fingerprint: str, config_hash: str) -> bool:
    """Nothing to retrain: no new event or mark since production's cut-off, and production
    was built from the same data (fingerprint) with the same config (hash)."""
    return (
        data.new_events == 0
        and data.new_marks == 0
        and production.data_fingerprint == fingerprint
        and production.config_hash == config_hash
    )


def print_report(
    candidate: HoldoutScore | None, production: HoldoutScore | None, gate: GateResult, k: int
) -> None:
    """The candidate-vs-production table and the gate's rows."""
    rows = {}
    for name, score in (("candidate", candidate), ("production", production)):
        if score is not None:
            rows[f"{name} {score.version}"] = score.row()
    columns = [f"{m}@{k}" for m in ("recall", "ndcg", "hit_rate", "coverage")]
    columns += ["p99_ms", "users", "unknown_users", "fallback_users"]
    print_table(rows, columns, title="holdout: candidate vs production (full catalogue)")
    gate_rows = {
        row.rule: {
            "candidate": row.candidate,
            "production": row.production,
            "threshold": row.threshold,
            "result": "pass" if row.passed else "FAIL",
            "note": row.note,
        }
        for row in gate.rows
    }
    verdict = "passed" if gate.passed else "FAILED"
    print_table(gate_rows, title=f"gate: {verdict}")


def register_outcome(
    registry: Registry,
    bundle: Path,
    gate: GateResult,
    metrics: dict[str, float],
    promote: bool,
) -> dict[str, Any]:
    """Register the candidate with its holdout ``metrics`` and the gate's decision: rejected
    with the reasons when the gate failed, promoted when it passed and ``promote``, left a
    candidate otherwise. Returns the version's registry facts."""
    version = registry.register(bundle, "candidate", metrics, (), ACTOR)
    family = version.family
    registry.log(family, version.version, "gate", gate.as_dict(), ACTOR)
    if not gate.passed:
        version = registry.reject(family, version.version, gate.reasons, ACTOR)
    elif promote:
        version = registry.promote(family, version.version, ACTOR, "passed the retrain gate")
    return {"family": family, "version": version.version, "stage": version.stage}
