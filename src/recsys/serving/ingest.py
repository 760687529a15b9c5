"""Reading events and experiment feedback coming in: validated, stored durably, and made
visible to trending, the cache and the next recommendation."""

from __future__ import annotations

import time

from recsys.errors import RecsysError
from recsys.serving.auth import Forbidden
from recsys.serving.core import ServingCore
from recsys.serving.schemas import EventIn, FeedbackIn
from recsys.serving.service import RecommendationService
from recsys.stores import Event


class UnknownEventBook(RecsysError):
    """An event about a book not in the catalogue (HTTP 422)."""


class Ingest:
    """Events and feedback for one serving process."""

    def __init__(self, core: ServingCore) -> None:
        self.core = core

    def require_store(self) -> None:
        """503 (with the reason) before anything else on a server without a store."""
        self.core.live.stores.require()

    def record(self, batch: list[EventIn]) -> tuple[int, int]:
        """Store events (idempotent by ``event_id``); returns (stored, duplicates).

        Every book must be listed in the catalogue (the model's or one added through the
        API); the user's cached answers are dropped and trending sees the events at once.
        """
        svc, stores = self.core.service, self.core.live.stores
        unknown = sorted({e.book_id for e in batch if not self._listed(svc, e.book_id)})
        if unknown:
            raise UnknownEventBook(
                f"unknown book id(s) {unknown[:5]}{' …' if len(unknown) > 5 else ''}; "
                "add books to the catalogue first (POST /books)"
            )
        authorless = sorted(
            {e.book_id for e in batch if e.type == "less_of_author" and not self._author(svc, e)}
        )
        if authorless:
            raise UnknownEventBook(
                f"book(s) {authorless[:5]} have no author: 'less_of_author' needs one "
                "(use not_interested for the book itself)"
            )
        now = time.time()
        rows = [
            Event(e.user_id, e.book_id, e.type, e.timestamp or now, e.value, e.event_id or "")
            for e in batch
        ]
        new = stores.events.append_new(rows)
        live = self.core.live
        if live.trending is not None:  # a retried event counts once
            for event in new:
                live.trending.add(event.book_id, event.type, event.ts, now)
        if live.cache is not None:
            for user in {e.user_id for e in new}:
                live.cache.invalidate_user(user, svc.version)
        self.core.metrics.events.inc(len(new))
        for event in new:
            self.core.drift.event(event.type, event.book_id)
        return len(new), len(rows) - len(new)

    @staticmethod
    def _author(svc: RecommendationService, event: EventIn) -> bool:
        """Whether the event's book has an author (in the live catalogue)."""
        index = svc.catalogue.index.get(event.book_id)
        author = svc.catalogue.authors[index] if index is not None else None
        return bool(author and str(author).strip())

    def _listed(self, svc: RecommendationService, book_id: str) -> bool:
        catalogue = svc.catalogue
        index = catalogue.index.get(book_id)
        if index is not None:
            return bool(catalogue.listed[index])
        return self.core.live.stores.catalogue.book(book_id) is not None

    def feedback(self, body: FeedbackIn) -> None:
        """A reader's reaction to a served list (``click`` counts toward click-through).
        Feedback on a list served to another user is refused (403): one reader cannot click
        for another in an experiment's figures. The first click on a list served under an
        experiment counts the impression as clicked, for its variant and bundle."""
        live = self.core.live
        if live.impressions is not None:
            live.impressions.flush()  # a click can come right after its list
        shown = live.stores.experiments.impression(body.impression_id)
        if shown is not None and shown.user_id != body.user_id:
            raise Forbidden(f"list {body.impression_id} was served to another user")
        live.stores.experiments.log_feedback(
            body.impression_id, body.user_id, body.book_id, body.type
        )
        metrics = self.core.metrics
        metrics.feedback.labels(body.type).inc()
        if shown is not None and body.type == "click" and not shown.clicked:
            metrics.clicked.labels(shown.experiment, shown.variant, shown.bundle).inc()
