"""The console's health figures from counter samples: percentiles interpolated in histogram
buckets as Prometheus does, rates and shares between two samples."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry

from recsys.serving.metrics import Metrics
from recsys.serving.vitals import point, quantile, sample


def test_quantile_interpolates_within_the_bucket() -> None:
    buckets = [(0.01, 10.0), (0.05, 90.0), (0.1, 100.0), (math.inf, 100.0)]
    assert quantile(0.05, buckets) == pytest.approx(0.005)  # 5 of the 10 below 10 ms
    assert quantile(0.5, buckets) == pytest.approx(0.01 + 0.04 * 40 / 80)
    assert quantile(0.99, buckets) == pytest.approx(0.05 + 0.05 * 9 / 10)
    assert quantile(0.5, [(0.1, 0.0), (math.inf, 0.0)]) is None
    beyond = [(0.1, 1.0), (math.inf, 10.0)]
    assert quantile(0.99, beyond) == 0.1  # past the last finite bound: that bound


def test_a_point_is_what_happened_between_two_samples() -> None:
    metrics = Metrics()
    user = "/recommendations/users/{user_id}"
    before = sample(metrics.registry, 100.0)
    answers = (
        (0.004, "personalized", "200"),
        (0.006, "personalized", "200"),
        (0.2, "-", "500"),
        (0.003, "popularity", "200"),  # the fallback answered
    )
    for seconds, source, status in answers:
        metrics.requests.labels(user, source, status).inc()
        metrics.latency.labels(user, source).observe(seconds)
    metrics.requests.labels("/recommendations/hybrid", "popularity", "200").inc()
    for _ in range(50):  # the console's own polling and scrapes are not traffic
        metrics.requests.labels("/metrics", "-", "200").inc()
        metrics.latency.labels("/metrics", "-").observe(1.0)
    for where in ("l1", "miss", "miss", "l2"):
        metrics.cache_lookup(where)
    metrics.events.inc(6)
    after = sample(metrics.registry, 102.0)
    figures = point(before, after)
    assert figures.at == 102.0
    assert figures.rps == pytest.approx(2.5)  # 5 API requests in 2 s
    assert figures.error_rate == pytest.approx(0.2)
    assert figures.fallback_rate == pytest.approx(0.25)  # 1 of 4 user lists
    assert figures.cache_hit_ratio == pytest.approx(0.5)
    assert figures.events_per_s == pytest.approx(3.0)
    assert figures.p50_ms is not None
    assert figures.p99_ms is not None
    assert 2.5 <= figures.p50_ms <= 10  # in the bucket of the 5-ms answers
    assert figures.p99_ms >= 100  # the slow 500
    quiet = point(after, sample(metrics.registry, 107.0))
    assert quiet.rps == 0
    assert quiet.p99_ms is None
    assert quiet.error_rate is None
    assert quiet.fallback_rate is None


def test_an_empty_registry_samples_to_zero() -> None:
    empty = sample(CollectorRegistry(), 1.0)
    assert (empty.requests, empty.events, empty.buckets) == (0.0, 0.0, ())
