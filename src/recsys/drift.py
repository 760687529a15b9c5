"""Drift between live inputs and what a bundle was trained on.

A bundle's :class:`TrainingSummary` holds one :class:`Reference` distribution per signal
(written at export, ``summary/training.json``); serving compares a sliding window of live
values with it. The distance is the **population stability index** over the reference's
categories or bins::

    PSI = sum_i (live_i - train_i) * ln(live_i / train_i)

with both shares floored at ``EPSILON`` so an empty bin is finite. PSI is symmetric, 0 for
identical distributions, and has a conventional reading (below 0.1: stable; 0.1-0.25: a
moderate shift; above 0.25: a shift worth a retrain), which is why it is preferred over
total variation (bounded, but with no such convention and blind to how rare a category was).
Numeric signals are cut at the reference's deciles, so each training bin holds about a tenth
of the mass. With ``n`` live samples over ``k`` bins, PSI of an unchanged distribution is
about ``(k - 1) / n`` (0.05 for 10 bins and 200 samples): serving waits for a minimum number
of samples before it reports a signal.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SUMMARY_SCHEMA = 1
EPSILON = 1e-4
QUANTILES = {"p10": 0.1, "p50": 0.5, "p90": 0.9}
# signal -> what it is (docs/operations.md lists the same)
SIGNALS = {
    "event_type": "mix of event types (training: a rated interaction is `rate`, others `read`)",
    "unknown_book": "share of events on books the bundle has no vocabulary entry for",
    "unknown_user": "share of recommendation requests from users outside the user vocabulary",
    "history_length": "length of the history behind a personalised request",
    "top_score": "score of the first book of a personalised list from the model",
}


@dataclass(frozen=True)
class Reference:
    """One signal's training distribution: shares over categories (``labels``) or over the
    bins cut by ``edges`` (bin ``i`` is ``(edges[i-1], edges[i]]``, open at both ends).

    Attributes:
        shares: share of the training values in each category or bin (sums to 1).
        labels: the categories of a categorical signal.
        edges: the inner cut points of a numeric signal.
        quantiles: p10, p50 and p90 of a numeric signal's training values.
        n: how many training values the shares come from.
    """

    shares: tuple[float, ...]
    labels: tuple[str, ...] = ()
    edges: tuple[float, ...] = ()
    quantiles: dict[str, float] = field(default_factory=dict)
    n: int = 0

    @classmethod
    def categorical(cls, labels: Sequence[str], values: Sequence[str]) -> Reference:
        """The shares of ``labels`` among ``values`` (values outside ``labels`` are left out)."""
        counts = _count_labels(labels, values)
        total = max(int(counts.sum()), 1)
        return cls(tuple(float(c) / total for c in counts), tuple(labels), n=int(counts.sum()))

    @classmethod
    def numeric(cls, values: Sequence[float] | np.ndarray, bins: int = 10) -> Reference:
        """Shares over bins cut at the deciles (``bins`` quantiles) of ``values``."""
        array = np.asarray(values, dtype=np.float64)
        if array.size == 0:
            return cls((1.0,), n=0)
        cuts = np.quantile(array, np.arange(1, bins) / bins)
        edges = tuple(float(e) for e in np.unique(cuts))
        counts = np.bincount(np.searchsorted(edges, array, side="left"), minlength=len(edges) + 1)
        quantiles = {k: float(np.quantile(array, q)) for k, q in QUANTILES.items()}
        shares = tuple(float(c) / array.size for c in counts)
        return cls(shares, edges=edges, quantiles=quantiles, n=int(array.size))

    def counts(self, values: Sequence[Any]) -> np.ndarray:
        """Live ``values`` counted in this reference's categories or bins."""
        if self.labels:
            return _count_labels(self.labels, values)
        array = np.asarray(values, dtype=np.float64)
        index = np.searchsorted(self.edges, array, side="left")
        return np.bincount(index, minlength=len(self.shares)).astype(np.float64)

    def stats(self, values: Sequence[Any] | None = None) -> dict[str, float]:
        """The signal's readable figures: each category's share, or p10/p50/p90; of the
        training data (``values`` None) or of live ``values``."""
        if values is None:
            if self.labels:
                return dict(zip(self.labels, self.shares, strict=True))
            return dict(self.quantiles)
        if self.labels:
            counts = self.counts(values)
            total = max(float(counts.sum()), 1.0)
            return {label: float(c) / total for label, c in zip(self.labels, counts, strict=True)}
        array = np.asarray(values, dtype=np.float64)
        return {k: float(np.quantile(array, q)) for k, q in QUANTILES.items()}

    def drift(self, values: Sequence[Any]) -> float:
        """PSI of live ``values`` against this reference (NaN without values)."""
        counts = self.counts(values)
        total = float(counts.sum())
        if total == 0:
            return math.nan
        return psi(np.asarray(self.shares), counts / total)


def psi(expected: np.ndarray, actual: np.ndarray, epsilon: float = EPSILON) -> float:
    """Population stability index of ``actual`` shares against ``expected`` shares (same
    categories or bins; each floored at ``epsilon``)."""
    e = np.maximum(np.asarray(expected, dtype=np.float64), epsilon)
    a = np.maximum(np.asarray(actual, dtype=np.float64), epsilon)
    return float(np.sum((a - e) * np.log(a / e)))


def _count_labels(labels: Sequence[str], values: Sequence[Any]) -> np.ndarray:
    position = {label: i for i, label in enumerate(labels)}
    counts = np.zeros(len(labels), dtype=np.float64)
    for value in values:
        i = position.get(value)
        if i is not None:
            counts[i] += 1
    return counts


@dataclass(frozen=True)
class TrainingSummary:
    """What live inputs are compared with: one :class:`Reference` per signal of
    :data:`SIGNALS` (a signal the training data could not describe is left out)."""

    signals: dict[str, Reference]

    def to_json(self) -> str:
        signals = {
            name: {
                "shares": list(ref.shares),
                "labels": list(ref.labels),
                "edges": list(ref.edges),
                "quantiles": ref.quantiles,
                "n": ref.n,
            }
            for name, ref in self.signals.items()
        }
        return json.dumps({"schema": SUMMARY_SCHEMA, "signals": signals}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> TrainingSummary:
        raw = json.loads(text)
        signals = {
            name: Reference(
                tuple(s["shares"]),
                tuple(s["labels"]),
                tuple(s["edges"]),
                dict(s["quantiles"]),
                int(s["n"]),
            )
            for name, s in raw["signals"].items()
            if name in SIGNALS
        }
        return cls(signals)

    @classmethod
    def load(cls, path: Path) -> TrainingSummary | None:
        """The summary at ``path``, or None when the bundle predates it."""
        return cls.from_json(path.read_text()) if path.is_file() else None
