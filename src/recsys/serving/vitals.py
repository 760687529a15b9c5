"""Live service health for the operator console, from the app's own Prometheus metrics.

A background thread reads the counters every ``every_s`` seconds into a ring of samples; the
console's health view is the difference between consecutive samples: requests per second,
latency percentiles (interpolated in the latency histogram's buckets, as Prometheus's
``histogram_quantile`` does), the share of 5xx answers, of user lists popularity answered
(the fallback, unknown readers included), of cache lookups answered from the cache, and
events stored per second. Each process (Ray replica) reports its own traffic.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections import deque
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from recsys.serving.schemas import VitalsPoint

# not API traffic: the console's own polling, scrapes, probes and the web app's files
QUIET = frozenset({"/metrics", "/ops/vitals", "/healthz", "/readyz", "/app", "unmatched"})
USER_LISTS = "/recommendations/users/{user_id}"


@dataclass(frozen=True)
class Sample:
    """Counter totals at one moment (see :func:`sample`)."""

    at: float
    requests: float
    server_errors: float
    user_lists: float
    fallbacks: float
    cache_hits: float
    cache_lookups: float
    events: float
    buckets: tuple[tuple[float, float], ...]  # (upper bound, cumulative count), API requests


def sample(registry: CollectorRegistry, at: float) -> Sample:
    """The totals of the request, fallback, cache and event counters now."""
    totals = dict.fromkeys(
        ("requests", "server_errors", "user_lists", "fallbacks", "hits", "lookups", "events"), 0.0
    )
    buckets: dict[float, float] = {}
    for metric in registry.collect():
        for s in metric.samples:
            labels, value = s.labels, s.value
            if s.name == "recsys_requests_total" and labels["endpoint"] not in QUIET:
                totals["requests"] += value
                totals["server_errors"] += value * labels["status"].startswith("5")
                if labels["endpoint"] == USER_LISTS:
                    totals["user_lists"] += value
                    totals["fallbacks"] += value * (labels["source"] == "popularity")
            elif s.name == "recsys_cache_lookups_total":
                totals["lookups"] += value
                totals["hits"] += value * (labels["result"] != "miss")
            elif s.name == "recsys_events_stored_total":
                totals["events"] += value
            elif (
                s.name == "recsys_request_latency_seconds_bucket"
                and labels["endpoint"] not in QUIET
            ):
                bound = float(labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + value
    return Sample(
        at,
        totals["requests"],
        totals["server_errors"],
        totals["user_lists"],
        totals["fallbacks"],
        totals["hits"],
        totals["lookups"],
        totals["events"],
        tuple(sorted(buckets.items())),
    )


def quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """The ``q`` quantile of a cumulative histogram ``[(upper bound, count)]``, linear within
    the bucket (Prometheus ``histogram_quantile``); None without observations."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower  # beyond the last finite bucket: its bound is all we know
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, count
    return lower


def _share(part: float, whole: float) -> float | None:
    return part / whole if whole > 0 else None


def point(before: Sample, after: Sample) -> VitalsPoint:
    """What happened between two samples."""
    span = max(after.at - before.at, 1e-9)
    requests = after.requests - before.requests
    lookups = after.cache_lookups - before.cache_lookups
    old = dict(before.buckets)
    window = [(bound, count - old.get(bound, 0.0)) for bound, count in after.buckets]
    p50, p99 = quantile(0.5, window), quantile(0.99, window)
    return VitalsPoint(
        at=after.at,
        rps=requests / span,
        p50_ms=None if p50 is None else p50 * 1000,
        p99_ms=None if p99 is None else p99 * 1000,
        error_rate=_share(after.server_errors - before.server_errors, requests),
        fallback_rate=_share(
            after.fallbacks - before.fallbacks, after.user_lists - before.user_lists
        ),
        cache_hit_ratio=_share(after.cache_hits - before.cache_hits, lookups),
        events_per_s=(after.events - before.events) / span,
    )


class Vitals:
    """Samples ``registry`` every ``every_s`` seconds, keeping the last ``keep`` samples."""

    def __init__(self, registry: CollectorRegistry, every_s: float = 5.0, keep: int = 121) -> None:
        self.registry, self.every_s = registry, every_s
        self._samples: deque[Sample] = deque(maxlen=keep)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.take()
        self._thread = threading.Thread(target=self._run, name="recsys-vitals", daemon=True)
        self._thread.start()

    def take(self) -> None:
        """Sample now (the thread does every ``every_s``)."""
        now = sample(self.registry, time.time())
        with self._lock:
            self._samples.append(now)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.take()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.every_s + 5)

    def series(self) -> list[VitalsPoint]:
        """One point per interval between consecutive samples, oldest first."""
        with self._lock:
            samples = list(self._samples)
        return [point(a, b) for a, b in itertools.pairwise(samples)]
