"""Monitoring over real HTTP: traffic that touches every feature (an experiment with a variant
bundle, the cache, feedback, events, every recommendation endpoint, errors and a refused swap)
exports every metric the Grafana dashboard and the Prometheus rules read; click-through is
attributed to the variant and bundle of the clicked list; and live traffic moves the drift
gauges over the RetrainNeeded threshold when the event mix shifts, and keeps them under it
when it is in distribution."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from tests.helpers.bundles import copy_version
from tests.helpers.promql import DASHBOARD, RULES, dashboard_exprs, exported_names_needed, rules

from recsys.bundle.reader import Bundle, load_bundle
from recsys.serving.app import create_app
from recsys.serving.live import Live
from recsys.serving.local import serve_in_thread
from recsys.serving.service import RecommendationService

pytestmark = pytest.mark.integration


@contextmanager
def serving(
    bundle: Bundle, folder: Path, experiments: dict[str, Any], **monitoring: Any
) -> Iterator[tuple[httpx.Client, FastAPI]]:
    """The app on loopback with a SQLite store, the cache, and ``experiments`` applied."""
    folder.mkdir(parents=True, exist_ok=True)
    file = folder / "experiments.yaml"
    file.write_text(yaml.safe_dump(experiments))
    live = Live.from_config(
        {
            "store": {"url": f"sqlite:///{folder / 'store.db'}"},
            "auth": {"enabled": False},
            "experiments": {"file": str(file), "poll_s": 0.1},
            "monitoring": monitoring,
        }
    )
    app = create_app(lambda: RecommendationService(bundle, 10.0, live=live))
    with serve_in_thread(app) as base, httpx.Client(base_url=base, timeout=30) as client:
        yield client, app


def scrape(client: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics``: (sample name, sorted labels) -> value."""
    text = client.get("/metrics").text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict[Any, float], name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code < 300, response.text
    body: dict[str, Any] = response.json()
    return body


def every_feature(client: httpx.Client, app: FastAPI, bundle: Bundle) -> dict[str, int]:
    """Traffic on every feature; returns clicks sent per variant."""
    users = [str(u) for u in bundle.known_histories["user_id"].to_list()[:80]]
    books = [str(b) for b in bundle.books["book_id"].to_list()[:40]]
    clicks: dict[str, int] = {}
    for i, user in enumerate(users):
        body = ok(client.post(f"/recommendations/users/{user}", json={"limit": 10}))
        meta = body["metadata"]
        if i % 4 == 0:  # a quarter of the lists clicked, twice: one clicked impression each
            for book in body["recommendations"][:2]:
                feedback = {"request_id": meta["request_id"], "user_id": user}
                ok(client.post("/feedback", json={**feedback, "book_id": book["book_id"]}))
            clicks[meta["variant"]] = clicks.get(meta["variant"], 0) + 1
    ok(client.post(f"/recommendations/users/{users[0]}", json={"limit": 10}))  # a cache hit
    ok(client.post("/recommendations/users/nobody-knows-me", json={"limit": 10}))  # fallback
    events = [{"user_id": f"reader-{i}", "book_id": books[i], "type": "read"} for i in range(40)]
    ok(client.post("/events", json={"events": events}))
    ok(client.post(f"/recommendations/books/{books[0]}", json={"limit": 5}))
    ok(client.post("/recommendations/hybrid", json={"seed_books": books[:3], "limit": 5}))
    ok(client.get("/recommendations/trending", params={"limit": 5}))
    assert client.post("/recommendations/books/no-such-book", json={}).status_code == 404
    assert not app.state.core.swap("/no/such/bundle")  # refused and counted
    return clicks


def test_dashboard_and_rules_read_only_exported_metrics(
    trained_bundle: dict[str, Any], tmp_path: Path
) -> None:
    bundle = load_bundle(trained_bundle["bundle"])
    other = copy_version(bundle.path, bundle.version + "-monitoring")
    experiment = {
        "name": "ranker_v2",
        "variants": {"control": 50, "treatment": 50},
        "settings": {"treatment": {"bundle": str(other)}},
    }
    with serving(bundle, tmp_path, {"experiments": [experiment]}, drift_min_samples=20) as (
        client,
        app,
    ):
        clicks = every_feature(client, app, bundle)
        samples = scrape(client)
    exported = {name for name, _ in samples}
    rule_exprs, recorded = rules()
    needed = exported_names_needed([*dashboard_exprs(json.loads(DASHBOARD.read_text()))], recorded)
    needed |= exported_names_needed(rule_exprs, recorded)
    assert len(needed) >= 20
    missing = sorted(needed - exported)
    assert not missing, (
        f"the dashboard or the rules read metrics the app does not export: {missing}"
    )
    # click-through is attributed to the clicked list's variant and bundle
    versions = {"control": bundle.version, "treatment": other.name}
    assert set(clicks) == {"control", "treatment"}
    for variant, clicked in clicks.items():
        labels = {"experiment": "ranker_v2", "variant": variant, "bundle": versions[variant]}
        assert value(samples, "recsys_experiment_clicked_impressions_total", **labels) == clicked
        shown = value(samples, "recsys_experiment_impressions_total", **labels)
        assert shown is not None
        assert shown > clicked
    impressions = [v for (n, _), v in samples.items() if n == "recsys_experiment_impressions_total"]
    assert sum(impressions) == 82  # 80 users, a cache hit and an unknown user
    coverage = value(samples, "recsys_catalogue_coverage", bundle=bundle.version)
    assert coverage is not None
    assert 0 < coverage < 1
    lists = value(samples, "recsys_list_diversity_count", endpoint="user", bundle=bundle.version)
    assert lists is not None
    assert lists >= 30


def retrain_threshold() -> float:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    rule = next(r for g in groups for r in g["rules"] if r.get("alert") == "RetrainNeeded")
    found = re.fullmatch(r"recsys:drift:max > ([0-9.]+)", rule["expr"].strip())
    assert found, rule["expr"]
    return float(found.group(1))


def drift(client: httpx.Client) -> dict[str, float]:
    return {
        dict(labels)["signal"]: v
        for (n, labels), v in scrape(client).items()
        if n == "recsys_drift"
    }


def test_drift_stays_low_in_distribution_and_crosses_the_alert_on_a_shifted_mix(
    trained_bundle: dict[str, Any], tmp_path: Path
) -> None:
    bundle = load_bundle(trained_bundle["bundle"])
    threshold = retrain_threshold()
    val_users = sorted(str(u) for u in trained_bundle["data"].val["user_id"].unique())
    users = np.random.default_rng(0).permutation(val_users)[:150].tolist()
    books = [str(b) for b in bundle.books["book_id"].to_list()]
    with serving(bundle, tmp_path, {}, drift_min_samples=100, drift_window=400) as (client, _):
        for user in users:  # returning validation users: the training summary's population
            ok(client.post(f"/recommendations/users/{user}", json={"limit": 10}))
        reads = [{"user_id": f"r{i}", "book_id": books[i % 50], "type": "read"} for i in range(120)]
        ok(client.post("/events", json={"events": reads}))
        calm = drift(client)
        assert set(calm) == {
            "event_type",
            "unknown_book",
            "unknown_user",
            "history_length",
            "top_score",
        }
        assert max(calm.values()) < threshold, calm
        views = [{"user_id": f"v{i}", "book_id": books[i % 50], "type": "view"} for i in range(200)]
        ok(client.post("/events", json={"events": views}))
        shifted = drift(client)
    assert shifted["event_type"] > threshold > calm["event_type"], (calm, shifted)
    for signal in ("unknown_book", "unknown_user", "history_length", "top_score"):
        assert shifted[signal] < threshold, (signal, shifted)
    print(f"\ndrift in distribution {calm}\ndrift after 200 views {shifted}")
