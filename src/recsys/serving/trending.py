"""Trending books: exponentially time-decayed event counts, updated as events arrive.

score(book, now) = sum over its events within the window of
``weight[type] * 2 ** (-(now - ts) / half_life)``. Scores are kept relative to a reference
time so an event is one addition; they are rebuilt from the store at start and every
``refresh_s`` (so replicas also see events that other replicas received).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

DEFAULT_WEIGHTS = {"view": 0.2, "rate": 1.0, "want_to_read": 0.5, "read": 1.0, "purchase": 1.5}


class Trending:
    def __init__(
        self,
        half_life_s: float = 6 * 3600,
        window_s: float = 7 * 86400,
        weights: dict[str, float] | None = None,
    ) -> None:
        if half_life_s <= 0 or window_s <= 0:
            raise ValueError("half_life_s and window_s must be positive")
        self.half_life_s, self.window_s = half_life_s, window_s
        self.weights = dict(DEFAULT_WEIGHTS if weights is None else weights)
        self._ref = time.time()
        self._scores: dict[str, float] = {}
        self._lock = threading.Lock()
        self.built_at = 0.0

    def _factor(self, ts: float) -> float:
        return 2.0 ** ((ts - self._ref) / self.half_life_s)

    def add(self, book_id: str, kind: str, ts: float, now: float | None = None) -> None:
        now = time.time() if now is None else now
        if ts < now - self.window_s:
            return
        with self._lock:
            value = self.weights.get(kind, 0.0) * self._factor(ts)
            self._scores[book_id] = self._scores.get(book_id, 0.0) + value
            if value > 1e200:  # keep the reference close to now
                self._rebase(now)

    def rebuild(self, events: Iterable[tuple[str, str, float]], now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self._lock:
            self._ref, self._scores = now, {}
            for book, kind, ts in events:
                if ts >= now - self.window_s:
                    value = self.weights.get(kind, 0.0) * self._factor(ts)
                    self._scores[book] = self._scores.get(book, 0.0) + value
            self.built_at = now

    def _rebase(self, now: float) -> None:
        shift = 2.0 ** ((self._ref - now) / self.half_life_s)
        self._scores = {b: s * shift for b, s in self._scores.items()}
        self._ref = now

    def top(self, n: int, now: float | None = None) -> list[tuple[str, float]]:
        """The ``n`` highest decayed scores at ``now`` (books with events only)."""
        now = time.time() if now is None else now
        scale = 2.0 ** ((self._ref - now) / self.half_life_s)
        with self._lock:
            ranked = sorted(self._scores.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
        return [(book, score * scale) for book, score in ranked if score * scale > 0]
