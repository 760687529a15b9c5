"""Business metrics of served lists on planted inputs: author diversity, catalogue coverage
over a sliding window, and the served pipeline's offline metrics."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from recsys.serving.quality import Coverage, QualityCollector, author_diversity, served_metrics


def test_author_diversity() -> None:
    assert author_diversity([]) is None
    assert author_diversity(["A", "B", "C", "D"]) == 1.0
    assert author_diversity(["A", "A", "A", "A"]) == 0.25
    assert author_diversity(["A", "A", "B", "C"]) == 0.75
    # unknown authors count as distinct: nothing says they repeat one
    assert author_diversity(["A", None, None, ""]) == 1.0
    assert author_diversity(["A", "A", None, None]) == 0.75


def catalogue(listed: int, delisted: int = 0) -> Any:
    flags = np.array([False, False] + [True] * listed + [False] * delisted)
    return SimpleNamespace(listed=flags)


def test_coverage_over_a_sliding_window() -> None:
    coverage = Coverage(window_s=100)
    small, large = catalogue(10, delisted=5), catalogue(100)
    coverage.add("v1", small, [2, 3, 4], now=1000)
    coverage.add("v1", small, [3, 4, 5], now=1050)  # 4 distinct of 10 listed
    coverage.add("v2", large, range(2, 52), now=1050)  # 50 of 100
    assert coverage.shares(now=1060) == {"v1": 0.4, "v2": 0.5}
    # at 1120 the first list is out of the window, but books 3 and 4 were served again
    assert coverage.shares(now=1120) == {"v1": 0.3, "v2": 0.5}
    coverage.add("v2", large, [2], now=1200)
    assert coverage.shares(now=1200) == {"v2": 0.01}  # v1 served nothing since: forgotten
    assert coverage.shares(now=5000) == {}


def test_served_metrics_are_the_served_pipelines() -> None:
    two_tower = {"recall@20": 0.2, "ndcg@20": 0.1, "note": "x"}
    assert served_metrics(two_tower) == {"ndcg@20": 0.1, "recall@20": 0.2}
    ranked = {**two_tower, "two_stage/recall@20": 0.3, "two_stage/ndcg@20": 0.15}
    assert served_metrics(ranked) == {"ndcg@20": 0.15, "recall@20": 0.3}


def test_quality_collector() -> None:
    coverage = Coverage(window_s=60)
    coverage.add("v1", catalogue(4), [2, 3], now=time.time())
    registry = CollectorRegistry()
    registry.register(QualityCollector(coverage, lambda: [("v1", {"two_stage/recall@20": 0.3})]))
    assert registry.get_sample_value("recsys_catalogue_coverage", {"bundle": "v1"}) == 0.5
    labels = {"bundle": "v1", "metric": "recall@20"}
    assert registry.get_sample_value("recsys_bundle_offline_metric", labels) == pytest.approx(0.3)
