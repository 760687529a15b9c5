"""Live inputs against the default bundle's training summary (see :mod:`recsys.drift`).

Events ingested (their type, whether the bundle knows the book) and user recommendation
requests (whether the bundle knows the user, the history length, the first model score) go
into bounded windows, one per signal: appending is all a request pays. ``/metrics`` computes
the drift (PSI) of each signal with at least ``min_samples`` values, with the live and
training figures next to it. A bundle without a summary (written before it existed) exports
no drift, and says so once in the log. A hot swap starts the windows afresh: the new bundle
has its own vocabulary and scores.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import deque
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from recsys.bundle.reader import Bundle
from recsys.drift import SIGNALS, TrainingSummary
from recsys.features.vocab import NUM_RESERVED
from recsys.serving.personalised import Answer

log = logging.getLogger(__name__)


class DriftMonitor:
    """Sliding windows of live inputs and their drift from a bundle's training summary.

    Args:
        window: the most recent values kept per signal.
        min_samples: values a signal needs before its drift is reported.
    """

    def __init__(self, window: int = 2000, min_samples: int = 200) -> None:
        self.window, self.min_samples = window, min_samples
        self.summary: TrainingSummary | None = None
        self._users: dict[str, int] = {}
        self._books: dict[str, int] = {}
        self._windows = self._empty()
        self._lock = threading.Lock()

    def _empty(self) -> dict[str, deque[Any]]:
        return {name: deque(maxlen=self.window) for name in SIGNALS}

    def rebase(self, bundle: Bundle) -> None:
        """Compare with ``bundle`` from now on (empty windows)."""
        summary = bundle.training_summary
        if summary is None:
            log.warning(
                "bundle %s has no training summary (written before drift monitoring): "
                "no drift metrics until a bundle with one serves",
                bundle.version,
            )
        with self._lock:
            self.summary = summary
            self._users, self._books = bundle.state.users.lookup, bundle.state.books.lookup
            self._windows = self._empty()

    def event(self, kind: str, book_id: str) -> None:
        """An event stored (duplicates excluded)."""
        known = self._books.get(book_id, 0) >= NUM_RESERVED
        with self._lock:
            self._windows["event_type"].append(kind)
            self._windows["unknown_book"].append("known" if known else "unknown")

    def request(self, user_id: str) -> None:
        """A user's recommendation request served by the default bundle."""
        known = self._users.get(user_id, 0) >= NUM_RESERVED
        with self._lock:
            self._windows["unknown_user"].append("known" if known else "unknown")

    def answer(self, answer: Answer, scored: bool = True) -> None:
        """The answer to such a request: its history length and, when the model answered
        (no fallback) on the bundle's own pipeline (``scored``), its first score."""
        with self._lock:
            if answer.history_length:
                self._windows["history_length"].append(answer.history_length)
            if scored and answer.fallback_reason is None and answer.from_model and answer.scores:
                self._windows["top_score"].append(answer.scores[0])

    def served(self, body: dict[str, Any], scored: bool = True) -> None:
        """A cached answer served again: the same signals as :meth:`answer`, from the
        response body (its ``history_length`` and first score), so users whose lists come
        from the cache (the most active, warmed after a swap) are not left out. The score
        counts only when the model proposed the first book (``from_model``), as for
        :meth:`answer`."""
        meta, items = body["metadata"], body["recommendations"]
        with self._lock:
            if meta.get("history_length"):
                self._windows["history_length"].append(meta["history_length"])
            personal = meta.get("source") == "personalized" and meta.get("fallback_reason") is None
            if scored and personal and meta.get("from_model") and items:
                self._windows["top_score"].append(items[0]["confidence_score"])

    def snapshot(self) -> dict[str, tuple[float, dict[str, float], dict[str, float], int]]:
        """Signal -> (PSI, live figures, training figures, live samples) for every signal
        of the summary with at least ``min_samples`` live values."""
        with self._lock:
            summary = self.summary
            windows = {name: list(values) for name, values in self._windows.items()}
        if summary is None:
            return {}
        out = {}
        for name, reference in summary.signals.items():
            values = windows.get(name, [])
            if len(values) < self.min_samples:
                continue
            drift = reference.drift(values)
            if not math.isnan(drift):
                out[name] = (drift, reference.stats(values), reference.stats(), len(values))
        return out


class DriftCollector(Collector):
    """``recsys_drift{signal}`` (PSI), ``recsys_drift_live{signal,stat}``,
    ``recsys_drift_training{signal,stat}`` and ``recsys_drift_samples{signal}``."""

    def __init__(self, monitor: DriftMonitor) -> None:
        self.monitor = monitor

    def collect(self) -> Iterator[Metric]:
        drift = GaugeMetricFamily(
            "recsys_drift",
            "Population stability index of a live input against the bundle's training data",
            labels=["signal"],
        )
        live = GaugeMetricFamily(
            "recsys_drift_live",
            "A live input's figures (shares or quantiles)",
            labels=["signal", "stat"],
        )
        training = GaugeMetricFamily(
            "recsys_drift_training",
            "The same figures in the bundle's training summary",
            labels=["signal", "stat"],
        )
        samples = GaugeMetricFamily(
            "recsys_drift_samples", "Live values in the signal's window", labels=["signal"]
        )
        for signal, (psi, now, then, n) in sorted(self.monitor.snapshot().items()):
            drift.add_metric([signal], psi)
            samples.add_metric([signal], n)
            for stat, value in now.items():
                live.add_metric([signal, stat], value)
            for stat, value in then.items():
                training.add_metric([signal, stat], value)
        yield from (drift, live, training, samples)
