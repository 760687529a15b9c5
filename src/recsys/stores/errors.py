"""The store's one error: an operation that cannot reach a store (HTTP 503 with Retry-After)."""

from __future__ import annotations

from recsys.errors import RecsysError

NO_STORE = "this server runs without a store (store.url=null)"


class StoreUnavailable(RecsysError):
    """An operation that needs the store, on a server without one or while the database is
    unreachable (HTTP 503, with the reason; ``retry_after`` seconds when it is worth a retry)."""

    def __init__(self, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
