"""Business metrics of served lists: diversity, catalogue coverage, and the offline quality of
the bundles being served.

- **Diversity** of one list is the share of distinct authors in it: ``distinct / len``, 1.0 when
  every book has another author, ``1/len`` when one author wrote them all. A book without an
  author counts as an author of its own (nothing says it repeats one). It costs one set per
  list and, unlike a distance between embeddings, means the same for every bundle, so
  variants serving other bundles compare on it.
- **Coverage** is the share of the listed catalogue served over a sliding window: distinct
  books in the lists computed in the last ``window_s`` over the books listed (per bundle
  version), computed when ``/metrics`` is scraped; a list adds its books to a dict.
- **Offline quality**: the served pipeline's validation metrics from each served bundle's
  manifest (``two_stage/*`` for a bundle with a ranker, the two-tower ones otherwise).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from recsys.serving.catalogue import Catalogue

DIVERSITY_BUCKETS = (0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.999, 1.0)


def author_diversity(authors: list[str | None]) -> float | None:
    """Share of distinct authors in a list (None for an empty list: nothing to measure).

    Args:
        authors: the author of each listed book, None where unknown.
    """
    if not authors:
        return None
    known = [a for a in authors if a]
    return (len(set(known)) + len(authors) - len(known)) / len(authors)


class Coverage:
    """Distinct books served per bundle version over a sliding window.

    Args:
        window_s: how far back a served book counts.
    """

    def __init__(self, window_s: float = 3600.0) -> None:
        self.window_s = window_s
        self._seen: dict[str, dict[int, float]] = {}  # version -> book index -> last served
        self._catalogues: dict[str, Catalogue] = {}
        self._lock = threading.Lock()

    def add(self, version: str, catalogue: Catalogue, books: Iterable[int], now: float) -> None:
        """Books of one list served by ``version`` (whose live catalogue is ``catalogue``)."""
        with self._lock:
            seen = self._seen.get(version)
            if seen is None:
                seen = self._seen[version] = {}
                self._catalogues[version] = catalogue
            for book in books:
                seen[book] = now

    def shares(self, now: float | None = None) -> dict[str, float]:
        """Version -> books served in the window / books listed; versions with nothing served
        in the window are forgotten."""
        since = (time.time() if now is None else now) - self.window_s
        out = {}
        with self._lock:
            for version in list(self._seen):
                seen = {b: t for b, t in self._seen[version].items() if t >= since}
                if not seen:
                    del self._seen[version], self._catalogues[version]
                    continue
                self._seen[version] = seen
                listed = int(self._catalogues[version].listed.sum())
                out[version] = len(seen) / max(listed, 1)
        return out


class QualityCollector(Collector):
    """``recsys_catalogue_coverage{bundle}`` and ``recsys_bundle_offline_metric{bundle,
    metric}`` at scrape time.

    Args:
        coverage: the served books.
        bundles: the served bundles' (version, manifest metrics), read at each scrape.
    """

    def __init__(
        self, coverage: Coverage, bundles: Callable[[], list[tuple[str, dict[str, Any]]]]
    ) -> None:
        self.coverage, self.bundles = coverage, bundles

    def collect(self) -> Iterator[Metric]:
        coverage = GaugeMetricFamily(
            "recsys_catalogue_coverage",
            "Share of the listed catalogue served in the coverage window, by bundle",
            labels=["bundle"],
        )
        for version, share in sorted(self.coverage.shares().items()):
            coverage.add_metric([version], share)
        offline = GaugeMetricFamily(
            "recsys_bundle_offline_metric",
            "Validation metrics of the served pipeline, from each served bundle's manifest",
            labels=["bundle", "metric"],
        )
        for version, metrics in self.bundles():
            for name, value in served_metrics(metrics).items():
                offline.add_metric([version, name], value)
        yield coverage
        yield offline


def served_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The metrics of the pipeline a bundle serves: ``two_stage/*`` (prefix dropped) when it
    has a ranker, the two-tower ones otherwise; numbers only."""
    prefix = "two_stage/"
    ranked = {k.removeprefix(prefix): v for k, v in metrics.items() if k.startswith(prefix)}
    chosen = ranked or metrics
    return {k: float(v) for k, v in sorted(chosen.items()) if isinstance(v, int | float)}
