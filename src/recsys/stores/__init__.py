"""Serving's stores, one class per role over one shared database (or the null set).

stores = open_store("sqlite:///artifacts/stores/recsys.db")
stores.events.append([...]); stores.catalogue.book("b1"); stores.users.delete_user(...)
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from recsys.stores.base import Stores
from recsys.stores.catalogue import SqlCatalogueStore
from recsys.stores.engine import Database
from recsys.stores.errors import StoreUnavailable
from recsys.stores.events import SqlEventStore, check_history_types
from recsys.stores.experiments import SqlExperimentStore
from recsys.stores.null import null_stores
from recsys.stores.schema import EVENT_TYPES, HISTORY_EVENT_TYPES, Event, Impression
from recsys.stores.users import SqlUserStore

__all__ = [
    "EVENT_TYPES",
    "HISTORY_EVENT_TYPES",
    "Event",
    "Impression",
    "StoreUnavailable",
    "Stores",
    "null_stores",
    "open_store",
]


def open_store(
    url: str | None, history_types: Iterable[str] | None = None, create: bool = True
) -> Stores:
    """The stores of the database at ``url`` (created and migrated on first open); the null
    set when ``url`` is empty, or with ``create=False`` (batch jobs, exports) when it is an
    embedded SQLite file that does not exist yet (no event was ever recorded)."""
    if not url:
        return null_stores()
    embedded = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else None
    if not create and embedded is not None and not Path(embedded).is_file():
        return null_stores()
    types = check_history_types(history_types or HISTORY_EVENT_TYPES)  # before anything is created
    db = Database(url)
    return Stores(
        SqlEventStore(db, types),
        SqlCatalogueStore(db),
        SqlUserStore(db),
        SqlExperimentStore(db),
        db,
    )
