"""Drift: PSI against numbers derived by hand, references built from planted inputs, the
training summary of a prepared dataset, and the serving monitor's windows and metrics."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
from prometheus_client import CollectorRegistry

from recsys.data.prepared import PreparedData
from recsys.drift import Reference, TrainingSummary, psi
from recsys.serving.drift import DriftCollector, DriftMonitor
from recsys.serving.personalised import Answer
from recsys.training.summary import training_summary


def test_psi_by_hand() -> None:
    assert psi(np.array([0.5, 0.5]), np.array([0.5, 0.5])) == 0.0
    # (0.8 - 0.5) ln(0.8/0.5) + (0.2 - 0.5) ln(0.2/0.5) = 0.3 ln 1.6 + 0.3 ln 2.5
    expected = 0.3 * math.log(1.6) + 0.3 * math.log(2.5)
    assert psi(np.array([0.5, 0.5]), np.array([0.8, 0.2])) == pytest.approx(expected)
    # an empty bin is floored at 1e-4, not infinite: (1 - 1e-4) ln(1 / 1e-4) + ...
    floored = psi(np.array([1.0, 0.0]), np.array([0.0, 1.0]))
    assert floored == pytest.approx(2 * (1 - 1e-4) * math.log(1e4))


def test_categorical_reference() -> None:
    ref = Reference.categorical(("read", "view", "rate"), ["read"] * 3 + ["view"] + ["skim"])
    assert ref.shares == (0.75, 0.25, 0.0)  # values outside the labels are left out
    assert ref.n == 4
    assert ref.stats() == {"read": 0.75, "view": 0.25, "rate": 0.0}
    assert ref.stats(["view", "view"]) == {"read": 0.0, "view": 1.0, "rate": 0.0}
    assert ref.drift(["read"] * 75 + ["view"] * 25) == pytest.approx(0.0)
    shifted = ref.drift(["view"] * 100)
    assert shifted == pytest.approx(psi(np.array([0.75, 0.25, 0]), np.array([0, 1.0, 0])))
    assert math.isnan(ref.drift([]))


def test_numeric_reference_cuts_at_deciles() -> None:
    values = np.arange(1, 101)  # 1..100: ten bins of ten
    ref = Reference.numeric(values)
    assert ref.edges == pytest.approx([10.9, 20.8, 30.7, 40.6, 50.5, 60.4, 70.3, 80.2, 90.1])
    assert ref.shares == pytest.approx([0.1] * 10)
    assert ref.quantiles == pytest.approx({"p10": 10.9, "p50": 50.5, "p90": 90.1})
    assert ref.drift(values) == pytest.approx(0.0)
    assert ref.counts([1, 10, 11, 100, 1000]).tolist() == [2, 1, 0, 0, 0, 0, 0, 0, 0, 2]
    # every live value in the top bin: (1 - 0.1) ln(1/0.1) + 9 (1e-4 - 0.1) ln(1e-4/0.1)
    top = 0.9 * math.log(10) + 9 * (1e-4 - 0.1) * math.log(1e-4 / 0.1)
    assert ref.drift([95] * 50) == pytest.approx(top)
    assert ref.stats([1, 2, 3]) == pytest.approx({"p10": 1.2, "p50": 2.0, "p90": 2.8})
    flat = Reference.numeric([3, 3, 3])  # one cut point, all mass below it
    assert (flat.edges, flat.shares) == ((3.0,), (1.0, 0.0))


def test_summary_round_trip(tmp_path: Path) -> None:
    summary = TrainingSummary(
        {
            "event_type": Reference.categorical(("read", "view"), ["read", "view"]),
            "top_score": Reference.numeric([0.1, 0.5, 0.9]),
        }
    )
    path = tmp_path / "training.json"
    path.write_text(summary.to_json())
    assert TrainingSummary.load(path) == summary
    assert TrainingSummary.load(tmp_path / "absent.json") is None


class HistoryLength:
    """A planted recommender: the first score is the number of books in the history row."""

    n_books = 10

    def recommend(
        self, users: np.ndarray, history: sp.csr_matrix, k: int, exclude_seen: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        lengths = np.diff(history.indptr).astype(np.float32)
        return np.full((len(users), k), 2), np.repeat(lengths[:, None], k, axis=1)


def test_training_summary_of_planted_data(prepared: PreparedData) -> None:
    summary = training_summary(prepared, HistoryLength(), max_users=100_000)
    signals = summary.signals
    assert set(signals) == {
        "event_type",
        "unknown_user",
        "unknown_book",
        "history_length",
        "top_score",
    }
    assert signals["event_type"].stats()["read"] == 1.0  # synthetic data has no ratings
    assert signals["event_type"].n == prepared.train.height
    val = prepared.val
    cold = val.filter(val["user_idx"] < 2)["user_id"].n_unique() / val["user_id"].n_unique()
    assert signals["unknown_user"].stats()["unknown"] == pytest.approx(cold)
    oov = (val["book_idx"] < 2).sum() / val.height
    assert signals["unknown_book"].stats()["unknown"] == pytest.approx(oov)
    # a validation user's history is everything known: training and validation books
    users = val["user_id"].unique()
    both = prepared.train.vstack(val.select(prepared.train.columns))
    lengths = both.filter(both["user_id"].is_in(users)).group_by("user_id").len()["len"]
    assert signals["history_length"].quantiles["p50"] == float(np.quantile(lengths, 0.5))
    # the planted scores are the history lengths of the known users (books in the vocabulary)
    assert signals["top_score"].n > 0.9 * signals["history_length"].n
    assert signals["top_score"].quantiles["p50"] == pytest.approx(
        signals["history_length"].quantiles["p50"], abs=1.0
    )
    small = training_summary(prepared, HistoryLength(), max_users=50, seed=3)
    assert small.signals["top_score"].n == 50
    assert training_summary(prepared, HistoryLength(), max_users=50, seed=3) == small


def fake_bundle(summary: TrainingSummary | None, version: str = "v1") -> Any:
    users = {"ann": 2, "bob": 3}
    books = {"b1": 2, "b2": 3}
    state = SimpleNamespace(
        users=SimpleNamespace(lookup=users), books=SimpleNamespace(lookup=books)
    )
    return SimpleNamespace(training_summary=summary, state=state, version=version)


SUMMARY = TrainingSummary(
    {
        "event_type": Reference.categorical(("read", "view"), ["read"] * 9 + ["view"]),
        "unknown_user": Reference.categorical(("known", "unknown"), ["known"] * 19 + ["unknown"]),
        "unknown_book": Reference.categorical(("known", "unknown"), ["known"]),
        "history_length": Reference.numeric(np.arange(1, 101)),
        "top_score": Reference.numeric(np.linspace(0, 1, 101)),
    }
)


def scrape(monitor: DriftMonitor) -> dict[tuple[str, ...], float]:
    registry = CollectorRegistry()
    registry.register(DriftCollector(monitor))
    return {
        (s.name, *s.labels.values()): s.value
        for family in registry.collect()
        for s in family.samples
    }


def test_monitor_windows_and_metrics() -> None:
    monitor = DriftMonitor(window=100, min_samples=20)
    monitor.rebase(fake_bundle(SUMMARY))
    for i in range(200):  # the window keeps the last 100: in distribution
        monitor.event("read" if i % 10 else "view", "b1")
        monitor.request("ann" if i % 20 else "new-user")
        answer = Answer([2], [float(i % 100) / 100], [], "personalized")
        answer.from_model, answer.history_length = 1, 1 + i % 100
        monitor.answer(answer)
    metrics = scrape(monitor)
    for signal in ("event_type", "unknown_user", "unknown_book", "history_length", "top_score"):
        assert metrics[("recsys_drift", signal)] < 0.05, signal
        assert metrics[("recsys_drift_samples", signal)] == 100
    assert metrics[("recsys_drift_live", "event_type", "view")] == pytest.approx(0.1)
    assert metrics[("recsys_drift_training", "event_type", "view")] == pytest.approx(0.1)
    assert metrics[("recsys_drift_training", "history_length", "p50")] == 50.5
    for _ in range(60):  # views and books the bundle does not know
        monitor.event("view", "added-later")
    metrics = scrape(monitor)
    assert metrics[("recsys_drift", "event_type")] > 1.0
    assert metrics[("recsys_drift", "unknown_book")] > 1.0
    assert metrics[("recsys_drift_live", "unknown_book", "unknown")] == pytest.approx(0.6)


def test_fallbacks_and_unscored_answers_add_no_score() -> None:
    monitor = DriftMonitor(window=10, min_samples=1)
    monitor.rebase(fake_bundle(SUMMARY))
    fallback = Answer([2], [5.0], [], "popularity", "timeout")
    fallback.history_length = 7
    monitor.answer(fallback)
    retrieval = Answer([2], [9.0], [], "personalized")
    retrieval.from_model = 1
    monitor.answer(retrieval, scored=False)
    monitor.answer(Answer([], [], [], "popularity", "unknown_user"))  # no history: no length
    snapshot = monitor.snapshot()
    assert "top_score" not in snapshot
    assert snapshot["history_length"][3] == 1


def test_min_samples_swap_and_bundles_without_a_summary(caplog: pytest.LogCaptureFixture) -> None:
    monitor = DriftMonitor(window=100, min_samples=20)
    monitor.rebase(fake_bundle(SUMMARY))
    for _ in range(19):
        monitor.event("view", "b1")
    assert monitor.snapshot() == {}  # 19 of 20 samples: nothing reported yet
    monitor.event("view", "b1")
    assert set(monitor.snapshot()) == {"event_type", "unknown_book"}
    monitor.rebase(fake_bundle(SUMMARY, "v2"))  # a swap starts afresh
    assert monitor.snapshot() == {}
    with caplog.at_level(logging.WARNING, logger="recsys.serving.drift"):
        monitor.rebase(fake_bundle(None, "old"))
    assert "old has no training summary" in caplog.text
    for _ in range(50):
        monitor.event("view", "b1")
    assert monitor.snapshot() == {}
    assert scrape(monitor) == {}


def served_both(
    scores: list[float], history_length: int, from_model: int
) -> tuple[DriftMonitor, DriftMonitor, dict[str, Any]]:
    """A personal answer fed to one monitor as computed and to another as its cached body
    (books b1, b2); returns both monitors and the body."""
    from recsys.serving.core import shape_answer

    computed, cached = (DriftMonitor(window=10, min_samples=1) for _ in range(2))
    for monitor in (computed, cached):
        monitor.rebase(fake_bundle(SUMMARY))
    answer = Answer([2, 3], scores, ["r", "r"], "personalized")
    answer.history_length, answer.from_model = history_length, from_model
    computed.answer(answer)
    svc = SimpleNamespace(
        catalogue=SimpleNamespace(ids=["", "", "b1", "b2"], titles=[None] * 4, authors=[None] * 4),
        version="v1",
    )
    body = shape_answer(svc, answer, 0.0, "r1").model_dump(mode="json")  # type: ignore[arg-type]
    cached.served(body)
    return computed, cached, body


def test_cached_answers_count_like_computed_ones() -> None:
    """A list served from the cache adds its history length and first score, as the
    computed one did; a fallback's cached list adds no score."""
    computed, cached, body = served_both([0.75, 0.5], 37, 2)
    assert body["metadata"]["history_length"] == 37
    assert list(cached._windows["history_length"]) == list(computed._windows["history_length"])
    assert list(cached._windows["top_score"]) == list(computed._windows["top_score"]) == [0.75]
    body["metadata"]["fallback_reason"] = "timeout"
    cached.served(body)
    assert list(cached._windows["top_score"]) == [0.75]
    assert list(cached._windows["history_length"]) == [37, 37]


def test_cached_lists_the_model_did_not_start_add_no_score() -> None:
    """A personal list whose books all came from the popularity top-up (``from_model`` 0)
    adds no first score, cached or computed; nor does a cached body from before the field."""
    computed, cached, body = served_both([41.0, 40.0], 12, 0)
    assert body["metadata"]["from_model"] == 0
    assert list(computed._windows["top_score"]) == list(cached._windows["top_score"]) == []
    assert list(cached._windows["history_length"]) == [12]
    del body["metadata"]["from_model"]  # an entry cached before the field existed
    body["metadata"]["history_length"] = 13
    cached.served(body)
    assert list(cached._windows["top_score"]) == []
    assert list(cached._windows["history_length"]) == [12, 13]
