"""Prometheus metrics of one serving process (own registry, so several apps can live in one
process, as tests do).

Several worker processes behind one port (``recsys serve workers=N``) use prometheus_client's
multiprocess mode: the runner sets ``PROMETHEUS_MULTIPROC_DIR`` before the workers start, each
worker's counters and histograms live in files there, and ``/metrics`` and the console read
every worker's sum (:attr:`Metrics.exported`), whichever worker answers the scrape.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from recsys.breaker import Breaker
from recsys.serving.quality import DIVERSITY_BUCKETS

REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)


class Metrics:
    """Every metric the app exports, by attribute.

    ``registry``: this process's metrics (what it reports to the model registry for a
    canary's guardrails, like any replica). ``exported``: what ``/metrics`` and the console
    read: the same registry, or with several workers the sum over every worker's files plus
    this worker's own collectors (breakers, drift, list quality).
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.exported = self.registry
        shared = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if shared:
            self.exported = CollectorRegistry()
            MultiProcessCollector(self.exported, shared)
        self._lookups = [0, 0]  # cache hits, lookups
        self._requests()
        self._model()
        self._business()

    def _requests(self) -> None:
        """HTTP: requests, latency, errors, events stored, the cache."""
        count, time = self._counter, self._histogram
        self.requests = count(
            "recsys_requests",
            "Requests by endpoint, source and status",
            "endpoint",
            "source",
            "status",
        )
        self.latency = time(
            "recsys_request_latency_seconds",
            "Request latency",
            REQUEST_BUCKETS,
            "endpoint",
            "source",
        )
        self.errors = count(
            "recsys_errors", "Error responses by endpoint and status", "endpoint", "status"
        )
        self.events = count("recsys_events_stored", "Events stored (duplicates excluded)")
        self.cache = count(
            "recsys_cache_lookups", "Response cache lookups by result (l1, l2, miss)", "result"
        )
        self.warmed = count(
            "recsys_cache_warmed", "Default lists cached by warm-ups, by bundle", "bundle"
        )
        self.cache_hit_ratio = Gauge(
            "recsys_cache_hit_ratio",
            "Share of cache lookups answered from the cache (either level) since start "
            "(several workers: the last worker to look up)",
            registry=self.registry,
            multiprocess_mode="mostrecent",
        )

    def _model(self) -> None:
        """The model path: service and stage latency, fallbacks, bundle swaps."""
        count, time = self._counter, self._histogram
        self.fallbacks = count(
            "recsys_fallbacks", "Answers served by the fallback, by reason", "reason"
        )
        self.swaps = count(
            "recsys_bundle_swaps", "Hot swaps of the bundle, by result (loaded, refused)", "result"
        )
        self.service = time(
            "recsys_service_latency_seconds",
            "Service call latency (everything but HTTP) by endpoint",
            REQUEST_BUCKETS,
            "endpoint",
        )
        self.stage = time(
            "recsys_stage_latency_seconds",
            "Model stage latency (retrieval, ranking) as seen by the service",
            STAGE_BUCKETS,
            "stage",
        )
        self.batch_size = time(
            "recsys_stage_batch_size",
            "Requests answered by the same model call (micro-batch), counted per answer",
            BATCH_BUCKETS,
        )
        self.bundle_answers = count(
            "recsys_bundle_answers",
            "User recommendations by the bundle that answered and outcome (ok, fallback: a "
            "transient one, error)",
            "bundle",
            "outcome",
        )
        self.bundle_latency = time(
            "recsys_bundle_latency_seconds",
            "User recommendation latency by the bundle that answered (everything but HTTP)",
            REQUEST_BUCKETS,
            "bundle",
        )

    def _business(self) -> None:
        """What readers get: impressions and clicks per variant and bundle, diversity."""
        count, time = self._counter, self._histogram
        self.impressions = count(
            "recsys_experiment_impressions",
            "Lists served under an experiment, by variant and the bundle that served them",
            "experiment",
            "variant",
            "bundle",
        )
        self.clicked = count(
            "recsys_experiment_clicked_impressions",
            "Impressions clicked (the first click on a list), by the list's variant and bundle",
            "experiment",
            "variant",
            "bundle",
        )
        self.diversity = time(
            "recsys_list_diversity",
            "Share of distinct authors in each computed list, by endpoint and bundle",
            DIVERSITY_BUCKETS,
            "endpoint",
            "bundle",
        )
        self.feedback = count("recsys_feedback", "Feedback received, by type", "type")

    def watch(self, breakers: list[Breaker]) -> None:
        """Export the breakers' state: ``recsys_dependency_errors_total{dependency}`` and
        ``recsys_dependency_up{dependency}`` (0 while skipped after a failure)."""
        if breakers:
            self.collector(_BreakerCollector(breakers))

    def collector(self, collector: Collector) -> None:
        """Register a collector of this process's state (exported as it is by every worker)."""
        self.registry.register(collector)
        if self.exported is not self.registry:
            self.exported.register(collector)

    def _counter(self, name: str, doc: str, *labels: str) -> Counter:
        return Counter(name, doc, labels, registry=self.registry)

    def _histogram(
        self, name: str, doc: str, buckets: tuple[float, ...], *labels: str
    ) -> Histogram:
        return Histogram(name, doc, labels, registry=self.registry, buckets=buckets)

    def bundle_answer(self, bundle: str, outcome: str, seconds: float) -> None:
        """Count a user recommendation answered by ``bundle`` (``ok``, ``fallback``,
        ``error``)."""
        self.bundle_answers.labels(bundle, outcome).inc()
        self.bundle_latency.labels(bundle).observe(seconds)

    def cache_lookup(self, where: str) -> None:
        """Count a cache lookup (``l1``, ``l2`` or ``miss``) and update the hit ratio."""
        self.cache.labels(where).inc()
        self._lookups[1] += 1
        self._lookups[0] += where != "miss"
        self.cache_hit_ratio.set(self._lookups[0] / self._lookups[1])


class _BreakerCollector(Collector):
    def __init__(self, breakers: list[Breaker]) -> None:
        self.breakers = breakers

    def collect(self) -> Iterator[Metric]:
        errors = CounterMetricFamily(
            "recsys_dependency_errors",
            "Failed calls to an optional dependency",
            labels=["dependency"],
        )
        up = GaugeMetricFamily(
            "recsys_dependency_up",
            "1 when the dependency is used, 0 while it is skipped after a failure",
            labels=["dependency"],
        )
        for breaker in self.breakers:
            errors.add_metric([breaker.name], breaker.errors)
            up.add_metric([breaker.name], 1.0 if breaker.available else 0.0)
        yield errors
        yield up
