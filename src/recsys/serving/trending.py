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

import numpy as np

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
        # The highest ``_keep`` scores, kept sorted. Decay scales every score alike and an
        # event only raises its own book's, so an event changes the top by that book alone:
        # one small re-sort, never a sort of every book (unless a weight is not positive).
        self._keep = 100
        self._ranked: list[tuple[str, float]] = []
        self._dirty = True  # the top must be recomputed from every score

    def _factor(self, ts: float) -> float:
        return 2.0 ** ((ts - self._ref) / self.half_life_s)

    def add(self, book_id: str, kind: str, ts: float, now: float | None = None) -> None:
        now = time.time() if now is None else now
        if ts < now - self.window_s:
            return
        with self._lock:
            value = self.weights.get(kind, 0.0) * self._factor(ts)
            score = self._scores.get(book_id, 0.0) + value
            self._scores[book_id] = score
            self._update_top(book_id, score, value)
            if value > 1e200:  # keep the reference close to now
                self._rebase(now)

    def _update_top(self, book_id: str, score: float, added: float) -> None:
        if self._dirty:
            return
        if added < 0:  # a book may fall out of the top: recompute when next asked
            self._dirty = True
            return
        ranked = [(b, s) for b, s in self._ranked if b != book_id]
        full = len(ranked) >= self._keep
        if len(ranked) < len(self._ranked) or not full or score > ranked[-1][1]:
            ranked.append((book_id, score))
            ranked.sort(key=_order)
            self._ranked = ranked[: self._keep]

    def rebuild(self, events: Iterable[tuple[str, str, float]], now: float | None = None) -> None:
        """Scores from scratch (vectorised: a store of 100k recent events takes a few ms
        here, the fetch aside)."""
        now = time.time() if now is None else now
        rows = list(events)
        scores: dict[str, float] = {}
        if rows:
            books, kinds, stamps = zip(*rows, strict=True)
            ts = np.asarray(stamps, dtype=np.float64)
            kind_names, kind_of = np.unique(np.asarray(kinds, dtype=object), return_inverse=True)
            weight = np.array([self.weights.get(str(k), 0.0) for k in kind_names])[kind_of]
            keep = ts >= now - self.window_s
            value = weight * np.exp2((ts - now) / self.half_life_s)
            names, book_of = np.unique(np.asarray(books, dtype=object)[keep], return_inverse=True)
            totals = np.bincount(book_of, weights=value[keep], minlength=len(names))
            scores = dict(zip(names.tolist(), totals.tolist(), strict=True))
        with self._lock:
            self._ref, self._scores = now, scores
            self._dirty = True
            self.built_at = now

    def _rebase(self, now: float) -> None:
        shift = 2.0 ** ((self._ref - now) / self.half_life_s)
        self._scores = {b: s * shift for b, s in self._scores.items()}
        self._ref = now
        self._dirty = True

    def top(self, n: int, now: float | None = None) -> list[tuple[str, float]]:
        """The ``n`` highest decayed scores at ``now`` (books with events only)."""
        now = time.time() if now is None else now
        with self._lock:
            if self._dirty or n > self._keep:
                self._keep = max(n, self._keep)
                self._ranked = sorted(self._scores.items(), key=_order)[: self._keep]
                self._dirty = False
            ranked = self._ranked[:n]
            scale = 2.0 ** ((self._ref - now) / self.half_life_s)
        return [(book, score * scale) for book, score in ranked if score * scale > 0]


def _order(item: tuple[str, float]) -> tuple[float, str]:
    return -item[1], item[0]
