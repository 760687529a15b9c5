"""One interface per store role (gorse's storage/data, cache, meta split), and the set of them
that serving holds: SQL-backed (:func:`recsys.stores.open_store`) or the null set of a server
run without a store (:mod:`recsys.stores.null`)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import polars as pl

from recsys.stores.engine import Database
from recsys.stores.errors import NO_STORE, StoreUnavailable
from recsys.stores.schema import Event, Impression


class EventStore(Protocol):
    history_types: tuple[str, ...]

    def append(self, batch: list[Event]) -> tuple[int, int]: ...
    def append_new(self, batch: list[Event]) -> list[Event]: ...
    def history(self, user_id: str) -> list[tuple[str, float, str]]: ...
    def serving_history(self, user_id: str) -> tuple[bool, list[str]]: ...
    def event_histories(self) -> dict[str, list[str]]: ...
    def history_frame(self) -> pl.DataFrame: ...
    def recent(self, since: float) -> Iterator[tuple[str, str, float]]: ...


class CatalogueStore(Protocol):
    def seed_books(self, frame: pl.DataFrame) -> int: ...
    def listed(self, bundle_books: pl.DataFrame) -> pl.DataFrame: ...
    def books_frame(self) -> pl.DataFrame: ...
    def added_books(self) -> list[dict[str, Any]]: ...
    def book(self, book_id: str) -> dict[str, Any] | None: ...
    def put_book(self, book_id: str, fields: dict[str, Any], create: bool) -> dict[str, Any]: ...
    def delete_book(self, book_id: str) -> bool: ...
    def search_books(self, query: str, limit: int = 20) -> list[dict[str, Any]]: ...


class UserStore(Protocol):
    def user(self, user_id: str) -> dict[str, Any] | None: ...
    def user_hash(self, user_id: str) -> str: ...
    def is_deleted(self, user_id: str) -> bool: ...
    def deleted_filter(self, user_ids: Iterable[str]) -> set[str]: ...
    def delete_user(self, user_id: str, actor: str) -> dict[str, Any]: ...
    def audit(self) -> list[dict[str, Any]]: ...


class ExperimentStore(Protocol):
    def log_impressions(self, rows: list[dict[str, Any]]) -> None: ...
    def log_feedback(self, request_id: str, user_id: str, book_id: str, kind: str) -> None: ...
    def impression(self, request_id: str) -> Impression | None: ...
    def experiment_counts(self, name: str) -> dict[str, tuple[int, int]]: ...
    def experiment_series(self, name: str, bucket_s: int) -> list[tuple[float, str, int, int]]: ...


@dataclass
class Stores:
    """The stores of one database, by role.

    ``persistent`` is False for the null set (no database): reads on the recommendation path answer
    "nothing beyond the bundle", every other operation raises :class:`StoreUnavailable`.
    """

    events: EventStore
    catalogue: CatalogueStore
    users: UserStore
    experiments: ExperimentStore
    db: Database | None = None  # None: the null set

    @property
    def persistent(self) -> bool:
        return self.db is not None

    @property
    def url(self) -> str | None:
        return self.db.url if self.db is not None else None

    def require(self) -> None:
        """Raise :class:`StoreUnavailable` on the null set."""
        if self.db is None:
            raise StoreUnavailable(NO_STORE)

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
