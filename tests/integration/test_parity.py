"""The served lists equal the in-process lists (#20): the local runner over real HTTP, with
concurrent callers sharing micro-batches and exploration on. The Ray topologies run the same
check in test_serving_ray.py."""

from __future__ import annotations

from typing import Any

import pytest
from tests.helpers.parity import assert_same, in_process, parity_users, served

from recsys.bundle.reader import load_bundle
from recsys.serving.app import create_app
from recsys.serving.live import Live
from recsys.serving.local import serve_in_thread
from recsys.serving.service import RecommendationService

pytestmark = pytest.mark.integration

# As `recsys serve` runs, less the stores, cache and auth; exploration on (its slots are
# compared by position).
LIVE = {
    "store": None,
    "cache": {"enabled": False},
    "auth": {"enabled": False},
    "exploration": {"share": 0.2},
}


def test_local_runner_serves_the_in_process_lists(trained_bundle: dict[str, Any]) -> None:
    bundle = trained_bundle["bundle"]
    users = parity_users(bundle)
    expected = in_process(bundle, users, 10, LIVE)
    assert any(explored for _, explored in expected.values())  # exploration is exercised
    live = Live.from_config(LIVE)
    sizes: list[int] = []

    def load() -> RecommendationService:
        service = RecommendationService(load_bundle(bundle), 5.0, live=live)
        model = service._batcher.fn  # the model call, counted: batch sizes

        def counted(requests: list[Any]) -> Any:
            sizes.append(len(requests))
            return model(requests)

        service._batcher.fn = counted
        return service

    app = create_app(load)
    with serve_in_thread(app) as base:
        rounds = served(base, users, 10)
    live.close()
    assert_same(expected, rounds)
    assert max(sizes) > 1, sizes  # concurrent callers shared model calls
