"""The null stores of a server run without a store (``store.url=null``): the recommendation
path sees no events and the bundle's catalogue; every endpoint that needs the store gets a
clear 503 (:class:`StoreUnavailable`) instead of ``None`` checks all through serving."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, NoReturn

import polars as pl

from recsys.stores.base import Stores
from recsys.stores.errors import NO_STORE, StoreUnavailable
from recsys.stores.events import HISTORY_FRAME_SCHEMA, MARKS_FRAME_SCHEMA, ServingReads
from recsys.stores.schema import HISTORY_EVENT_TYPES, Event, Impression


def _unavailable(*_: Any, **__: Any) -> NoReturn:
    raise StoreUnavailable(NO_STORE)


class NullEvents:
    history_types: tuple[str, ...] = HISTORY_EVENT_TYPES

    def append(self, batch: list[Event]) -> tuple[int, int]:
        _unavailable()

    def append_new(self, batch: list[Event]) -> list[Event]:
        _unavailable()

    def history(self, user_id: str) -> list[tuple[str, float, str]]:
        _unavailable()

    def serving_history(self, user_id: str) -> tuple[bool, list[str]]:
        return False, []  # nothing known beyond the bundle

    def serving_reads(self, user_id: str) -> ServingReads:
        return ServingReads(False, [], [], [])

    def preferences(self, user_id: str) -> list[tuple[str, str, float]]:
        _unavailable()

    def forget_preferences(self, user_id: str, book_id: str | None = None) -> int:
        _unavailable()

    def event_histories(self) -> dict[str, list[str]]:
        return {}

    def history_frame(self) -> pl.DataFrame:
        return pl.DataFrame(schema=HISTORY_FRAME_SCHEMA)  # no event was ever stored

    def marks_frame(self) -> pl.DataFrame:
        return pl.DataFrame(schema=MARKS_FRAME_SCHEMA)

    def recent(self, since: float) -> Iterator[tuple[str, str, float]]:
        return iter(())


class NullCatalogue:
    def seed_books(self, frame: pl.DataFrame) -> int:
        return 0

    def listed(self, bundle_books: pl.DataFrame) -> pl.DataFrame:
        return bundle_books  # the bundle's catalogue, unedited

    def books_frame(self) -> pl.DataFrame:
        _unavailable()

    def added_books(self) -> list[dict[str, Any]]:
        return []

    def book(self, book_id: str) -> dict[str, Any] | None:
        _unavailable()

    def put_book(self, book_id: str, fields: dict[str, Any], create: bool) -> dict[str, Any]:
        _unavailable()

    def delete_book(self, book_id: str) -> bool:
        _unavailable()

    def search_books(self, query: str, limit: int = 20) -> list[dict[str, Any]]:
        _unavailable()

    def put_review(
        self, book_id: str, user_id: str, rating: int, text: str
    ) -> tuple[dict[str, Any], bool]:
        _unavailable()

    def reviews(self, book_id: str, limit: int) -> tuple[list[dict[str, Any]], int, float | None]:
        _unavailable()

    def delete_review(self, book_id: str, user_id: str) -> bool:
        _unavailable()


class NullUsers:
    def user(self, user_id: str) -> dict[str, Any] | None:
        _unavailable()

    def user_hash(self, user_id: str) -> str:
        _unavailable()

    def is_deleted(self, user_id: str) -> bool:
        _unavailable()

    def deleted_filter(self, user_ids: Iterable[str]) -> set[str]:
        return set()  # nobody was erased where nothing is stored

    def delete_user(self, user_id: str, actor: str) -> dict[str, Any]:
        _unavailable()

    def follow(self, user_id: str, followee_id: str) -> bool:
        _unavailable()

    def unfollow(self, user_id: str, followee_id: str) -> bool:
        _unavailable()

    def following(self, user_id: str) -> list[tuple[str, float]]:
        return []  # nobody follows anyone where nothing is stored

    def followers(self, user_id: str) -> list[str]:
        return []

    def audit(self) -> list[dict[str, Any]]:
        _unavailable()


class NullExperiments:
    def log_impressions(self, rows: list[dict[str, Any]]) -> None:
        _unavailable()

    def log_explorations(self, rows: list[dict[str, Any]]) -> None:
        _unavailable()

    def explorations_of(self, user_id: str) -> list[dict[str, Any]]:
        _unavailable()

    def log_feedback(self, request_id: str, user_id: str, book_id: str, kind: str) -> None:
        _unavailable()

    def impression(self, request_id: str) -> Impression | None:
        _unavailable()

    def experiment_counts(self, name: str) -> dict[str, tuple[int, int]]:
        _unavailable()

    def experiment_series(self, name: str, bucket_s: int) -> list[tuple[float, str, int, int]]:
        _unavailable()


def null_stores() -> Stores:
    """The store set of a server without a store."""
    return Stores(NullEvents(), NullCatalogue(), NullUsers(), NullExperiments())
