"""Watching a server switch between two genuinely different bundle versions under load: which
version answered each request and when, and whether each list is the one its version gives."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx

from recsys.bundle.reader import load_bundle
from recsys.serving.service import RecommendationService


def expected_lists(bundle: Path, users: list[str], limit: int) -> dict[str, frozenset[str]]:
    """Each user's top books from this bundle alone, in process."""
    service = RecommendationService(load_bundle(bundle), 30.0)
    ids = service.catalogue.ids
    out = {}
    for user in users:
        answer = service.for_user(user, limit, [], None)
        assert answer.source == "personalized"
        out[user] = frozenset(str(ids[i]) for i in answer.books)
    return out


class VersionLog:
    """A ``Load`` inspector: records (time, bundle_version) of every 200 and flags a list
    that is not the one the version it names gives (a mixed or stale answer)."""

    def __init__(self, expected: dict[str, dict[str, frozenset[str]]]) -> None:
        self.expected = expected
        self.seen: list[tuple[float, str]] = []
        self._lock = threading.Lock()

    def __call__(self, response: httpx.Response) -> str | None:
        meta = response.json()["metadata"]
        named = meta["bundle_version"]
        with self._lock:
            self.seen.append((time.monotonic(), named))
        if named not in self.expected:
            return f"unknown version {named}"
        if meta["source"] != "personalized":
            return None
        user = response.url.path.rsplit("/", 1)[1]
        books = frozenset(r["book_id"] for r in response.json()["recommendations"])
        return None if books == self.expected[named][user] else "list of another version"

    def since(self, start: float, end: float = float("inf")) -> list[tuple[float, str]]:
        with self._lock:
            return [(t, v) for t, v in self.seen if start <= t < end]

    def settle(self, start: float, version: str, bound_s: float, quiet_s: float = 1.0) -> float:
        """Wait until answers after ``start`` have been only ``version`` for ``quiet_s``;
        returns when the last other version answered (seconds after ``start``)."""
        deadline = start + bound_s + quiet_s
        while time.monotonic() < deadline:
            time.sleep(0.1)
            recent = self.since(start)
            last_other = max((t for t, v in recent if v != version), default=start)
            if time.monotonic() - last_other >= quiet_s and any(t > last_other for t, _ in recent):
                return last_other - start
        raise AssertionError(f"answers did not switch to {version} within {bound_s} s")
