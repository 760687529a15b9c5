"""Cache warming after start-up and after a hot swap, over real HTTP: the most active readers'
first request is a cache hit, of the new bundle, with the list the bundle gives in process."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.helpers.bundles import reversed_ranker

from recsys.bundle.reader import load_bundle
from recsys.serving.app import create_app
from recsys.serving.live import Live
from recsys.serving.local import serve_in_thread
from recsys.serving.service import RecommendationService
from recsys.serving.warmup import WarmUp, most_active

pytestmark = pytest.mark.integration


def warmed(core: Any, version: str, timeout_s: float = 60.0) -> WarmUp:
    deadline = time.monotonic() + timeout_s
    while (last := core.warmer.last) is None or last.bundle != version:
        assert time.monotonic() < deadline, f"no warm-up of {version} within {timeout_s} s"
        time.sleep(0.05)
    return last


def in_process(bundle: Path, user: str) -> list[str]:
    service = RecommendationService(load_bundle(bundle), 30.0)
    answer = service.for_user(user, 10, [], None)
    ids = [str(service.catalogue.ids[b]) for b in answer.books]
    service.close()
    return ids


def test_start_and_swap_warm_the_most_active_readers(
    trained_bundle: dict[str, Any], tmp_path: Path
) -> None:
    old = load_bundle(trained_bundle["bundle"])
    new = reversed_ranker(old.path)
    live = Live.from_config(
        {
            "store": {"url": f"sqlite:///{tmp_path / 'store.db'}"},
            "auth": {"enabled": False},
            "cache": {"warm_users": 5, "warm_seconds": 60},
        }
    )
    app = create_app(lambda: RecommendationService(old, 10.0, live=live))
    with serve_in_thread(app) as base, httpx.Client(base_url=base, timeout=30) as client:
        core = app.state.core
        first = warmed(core, old.version)
        assert (first.warmed, first.complete) == (5, True)

        assert core.swap(new)
        after = warmed(core, new.name)
        assert (after.warmed, after.complete) == (5, True)
        active = most_active(core.service, 5)
        for user in active:
            body = client.post(f"/recommendations/users/{user}", json={"limit": 10}).json()
            meta = body["metadata"]
            assert (meta["cache"], meta["bundle_version"], meta["source"]) == (
                "l1",
                new.name,
                "personalized",
            )
            assert meta["request_id"] != "warm-up"  # the request's own metadata
            books = [r["book_id"] for r in body["recommendations"]]
            assert books == in_process(new, user)  # the list the bundle gives in process
        # a reader beyond the warmed five is computed on request
        other = next(u for u in core.service.histories if u not in active)
        cold = client.post(f"/recommendations/users/{other}", json={"limit": 10}).json()
        assert cold["metadata"]["cache"] is None
        metrics = client.get("/metrics").text
    assert f'recsys_cache_warmed_total{{bundle="{new.name}"}} 5.0' in metrics


def test_no_warm_up_without_a_cache_or_with_none_asked(trained_bundle: dict[str, Any]) -> None:
    bundle = load_bundle(trained_bundle["bundle"])
    off = Live.from_config({"auth": {"enabled": False}, "cache": {"warm_users": 0}})
    app = create_app(lambda: RecommendationService(bundle, 10.0, live=off))
    with serve_in_thread(app):
        assert app.state.core.warmer.thread is None
        assert app.state.core.warmer.last is None
