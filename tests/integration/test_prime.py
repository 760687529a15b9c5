"""Priming: a bundle's model path runs once, in its model thread, before the bundle takes
traffic — at start-up, on a hot swap, for a canary — so its first readers do not wait for
one-off set-up. A model path that fails when primed is logged, and the service still
answers (popularity, as any request whose stages fail)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
from tests.helpers.bundles import reversed_ranker

from recsys.bundle.reader import load_bundle
from recsys.inference.two_stage import Retrieved
from recsys.serving.core import ServingCore
from recsys.serving.live import Live
from recsys.serving.service import RecommendationService
from recsys.serving.stages import LocalStages

pytestmark = pytest.mark.integration


class Counted(LocalStages):
    """Local stages that count the rows they retrieve for, and can be made to fail."""

    def __init__(self, service: RecommendationService, fail: bool = False) -> None:
        assert service.pipeline is not None
        super().__init__(service.pipeline)
        self.service = service
        self.rows: list[int] = []
        self.fail = fail
        self.seen: Callable[[], None] = lambda: None  # a hook run on each call

    def retrieve(
        self, users: np.ndarray, history: sp.csr_matrix, social: sp.csr_matrix | None = None
    ) -> Retrieved:
        if self.fail:
            raise RuntimeError("planted stage failure")
        self.seen()
        self.rows.append(len(users))
        return super().retrieve(users, history, social)


def live(tmp_path: Path) -> Live:
    return Live.from_config(
        {"store": {"url": f"sqlite:///{tmp_path / 'store.db'}"}, "cache": {"enabled": False}}
    )


def test_priming_runs_the_model_path_once(trained_bundle: dict[str, Any], tmp_path: Path) -> None:
    service = RecommendationService(
        load_bundle(trained_bundle["bundle"]), 10.0, live=live(tmp_path)
    )
    stages = Counted(service)
    service.stages = stages
    try:
        assert service.prime(users=4)
        assert sum(stages.rows) == 1 + 4  # a lone request, then four (batched or not)
        assert service.prime()  # once per service
        assert sum(stages.rows) == 5
    finally:
        service.close()


def test_a_failing_model_path_is_logged_and_the_service_still_answers(
    trained_bundle: dict[str, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    service = RecommendationService(
        load_bundle(trained_bundle["bundle"]), 10.0, live=live(tmp_path)
    )
    service.stages = Counted(service, fail=True)
    user = next(iter(service.histories))
    try:
        with caplog.at_level(logging.WARNING, logger="recsys.serving.service"):
            assert not service.prime()
        assert "priming the model path failed: planted stage failure" in caplog.text
        answer = service.for_user(user, 5, [], None)
        assert (answer.source, answer.fallback_reason) == ("popularity", "stage_error")
        assert len(answer.books) == 5
    finally:
        service.close()


def test_start_swap_and_canary_prime_before_any_request(
    trained_bundle: dict[str, Any], tmp_path: Path
) -> None:
    old = load_bundle(trained_bundle["bundle"])
    shared = live(tmp_path)
    counted: list[Counted] = []

    serving_while_primed: list[bool] = []  # per model call: was its service the default?

    def build(bundle: Any) -> RecommendationService:
        service = RecommendationService(bundle, 10.0, live=shared)
        counted.append(Counted(service))
        counted[-1].seen = lambda: serving_while_primed.append(core.service is service)
        service.stages = counted[-1]
        return service

    core = ServingCore(build(old), build=build)
    try:
        core.start()
        assert sum(counted[0].rows) == 5  # start-up
        serving_while_primed.clear()
        assert core.swap(reversed_ranker(old.path))
        assert sum(counted[1].rows) == 5  # the swapped-in bundle...
        # ...before it was installed (two or more model calls: the batch of four may split)
        assert len(serving_while_primed) >= 2
        assert not any(serving_while_primed)
        assert core.service is counted[1].service
        core.set_canary("family", str(old.path), 10.0)
        assert core.experiments.canary is not None
        assert core.experiments.canary[1].primed  # the canary (a sibling of the default)
    finally:
        core.close()


def test_priming_leaves_no_cost_estimate_behind(
    trained_bundle: dict[str, Any], tmp_path: Path
) -> None:
    """The batcher sheds requests it expects to miss their deadline, by the cost it measured:
    a warm-up's set-up is not what a request costs, so the first real batch is not shed."""
    service = RecommendationService(
        load_bundle(trained_bundle["bundle"]), 10.0, live=live(tmp_path)
    )
    try:
        assert service.prime()
        assert service._batcher.cost() == 0.0
        user = next(iter(service.histories))
        assert service.for_user(user, 5, [], None).source == "personalized"
        assert service._batcher.cost() > 0.0  # real requests are measured again
    finally:
        service.close()


def test_ray_stages_prime_each_bundle_they_load(trained_bundle: dict[str, Any]) -> None:
    """The chained topology's stage deployments load bundles through a cache that primes
    both stages; a failure there is logged, not raised (requests fall back)."""
    from recsys.serving.ray_app import prime_stages

    bundle = load_bundle(trained_bundle["bundle"])
    model = bundle.two_stage()
    calls: list[str] = []

    class Spy:
        def retrieve(self, users: np.ndarray, history: sp.csr_matrix) -> Retrieved:
            calls.append(f"retrieve {len(users)}")
            return model.retrieve(users, history)

        def rank(self, retrieved: Retrieved) -> np.ndarray:
            calls.append(f"rank {len(retrieved)}")
            return model.rank(retrieved)

    prime_stages(bundle, Spy())  # type: ignore[arg-type]
    assert calls == ["retrieve 4", "rank 4"]
