"""The catalogue through the API: search, read, add (retrievable at once), edit, delist."""

from __future__ import annotations

import time
from typing import Any

from recsys.errors import RecsysError
from recsys.serving.core import ServingCore
from recsys.serving.ingest import Ingest
from recsys.serving.schemas import EventIn, ReviewIn
from recsys.serving.service import UnknownBook
from recsys.stores.base import CatalogueStore


class BookExists(RecsysError):
    """POST /books of an existing id (HTTP 409)."""


class Books:
    """Catalogue operations of one serving process (the store and the live catalogue)."""

    def __init__(self, core: ServingCore) -> None:
        self.core = core

    @property
    def _store(self) -> CatalogueStore:
        return self.core.live.stores.catalogue

    def search(self, query: str, limit: int) -> list[dict[str, Any]]:
        return self._store.search_books(query, limit)

    def get(self, book_id: str) -> dict[str, Any]:
        book = self._store.book(book_id)
        if book is None:
            raise UnknownBook(f"unknown book id '{book_id}'")
        return book

    def create(self, book_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        """Add a book (BookExists if listed); a book the model never saw gets a vector from
        its side features and is recommendable without retraining."""
        try:
            book = self._store.put_book(book_id, fields, True)
        except KeyError:
            raise BookExists(f"book '{book_id}' already exists; use PUT to change it") from None
        svc = self.core.service
        if book["book_id"] in svc.catalogue.index:
            svc.catalogue.update(book)  # a model book deleted earlier and listed again
        else:
            svc.add_books([book])
        return book

    def update(self, book_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        try:
            book = self._store.put_book(book_id, fields, False)
        except LookupError:
            raise UnknownBook(f"unknown book id '{book_id}'") from None
        self.core.service.catalogue.update(book)
        return book

    def review(self, book_id: str, body: ReviewIn) -> tuple[dict[str, Any], bool]:
        """Create or replace the reader's review (UnknownBook unless listed); the rating is
        also a ``rate`` event (stars x 2, on the events' 0-10 scale), so it feeds the reader's
        history and the next training like any rating. Returns it and whether it is new."""
        self.get(book_id)
        event = EventIn(  # first: a review is never stored without its rating
            user_id=body.user_id,
            book_id=book_id,
            type="rate",
            value=float(2 * body.rating),
            timestamp=None,
            event_id=f"review-{book_id[:80]}-{time.time_ns()}",
        )
        Ingest(self.core).record([event])
        return self._store.put_review(book_id, body.user_id, body.rating, body.text)

    def reviews(self, book_id: str, limit: int) -> tuple[list[dict[str, Any]], int, float | None]:
        self.get(book_id)
        return self._store.reviews(book_id, limit)

    def delete_review(self, book_id: str, user_id: str) -> None:
        """Withdraw the reader's review (UnknownBook when there is none). The rating event
        stays, like any rating the reader gave."""
        if not self._store.delete_review(book_id, user_id):
            raise UnknownBook(f"no review of '{book_id}' by this reader")

    def delete(self, book_id: str) -> None:
        """Delist: no longer recommended or searchable (UnknownBook if not listed)."""
        if not self._store.delete_book(book_id):
            raise UnknownBook(f"unknown book id '{book_id}'")
        self.core.service.catalogue.remove(book_id)
