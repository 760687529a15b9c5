"""Prometheus metrics of one serving process (own registry, so several apps can live in one
process, as tests do)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    """Prometheus metrics of one app (own registry, so several apps can live in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "recsys_requests",
            "Requests by endpoint, source and status",
            ["endpoint", "source", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "recsys_request_latency_seconds",
            "Request latency",
            ["endpoint", "source"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        self.fallbacks = Counter(
            "recsys_fallbacks",
            "Answers served by the fallback, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.errors = Counter(
            "recsys_errors",
            "Error responses by endpoint and status",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.swaps = Counter(
            "recsys_bundle_swaps",
            "Hot swaps of the bundle, by result (loaded, refused)",
            ["result"],
            registry=self.registry,
        )
        self.events = Counter(
            "recsys_events_stored", "Events stored (duplicates excluded)", registry=self.registry
        )
        self.cache = Counter(
            "recsys_cache_lookups",
            "Response cache lookups by result (l1, l2, miss)",
            ["result"],
            registry=self.registry,
        )
        self.cache_hit_ratio = Gauge(
            "recsys_cache_hit_ratio",
            "Share of cache lookups answered from the cache (either level) since start",
            registry=self.registry,
        )
        self._lookups = [0, 0]  # hits, total
        self.impressions = Counter(
            "recsys_experiment_impressions",
            "Lists served under an experiment",
            ["experiment", "variant"],
            registry=self.registry,
        )
        self.feedback = Counter(
            "recsys_feedback", "Feedback received, by type", ["type"], registry=self.registry
        )
        self.service = Histogram(
            "recsys_service_latency_seconds",
            "Service call latency (everything but HTTP) by endpoint",
            ["endpoint"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        self.stage = Histogram(
            "recsys_stage_latency_seconds",
            "Model stage latency (retrieval, ranking) as seen by the service",
            ["stage"],
            registry=self.registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
        )

    def cache_lookup(self, where: str) -> None:
        """Count a cache lookup (``l1``, ``l2`` or ``miss``) and update the hit ratio."""
        self.cache.labels(where).inc()
        self._lookups[1] += 1
        self._lookups[0] += where != "miss"
        self.cache_hit_ratio.set(self._lookups[0] / self._lookups[1])
