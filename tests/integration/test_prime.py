"""Priming: a bundle's model path runs once, in its model thread, before the bundle takes
traffic — at start-up, on a hot swap, for a canary — so its first readers do not wait for
one-off set-up. A model path that fails when primed is logged, and the service still
answers (popularity, as any request whose stages fail)."""

from __future__ import annotations

import logging
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
        self.rows: list[int] = []
        self.fail = fail

    def retrieve(
        self, users: np.ndarray, history: sp.csr_matrix, social: sp.csr_matrix | None = None
    ) -> Retrieved:
        if self.fail:
            raise RuntimeError("planted stage failure")
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


def test_start_swap_and_canary_prime_before_any_request_and_count_no_answer(
    trained_bundle: dict[str, Any], tmp_path: Path
) -> None:
    old = load_bundle(trained_bundle["bundle"])
    shared = live(tmp_path)
    counted: list[Counted] = []

    def build(bundle: Any) -> RecommendationService:
        service = RecommendationService(bundle, 10.0, live=shared)
        counted.append(Counted(service))
        service.stages = counted[-1]
        return service

    core = ServingCore(build(old), build=build)
    try:
        core.start()
        assert sum(counted[0].rows) == 5  # start-up
        assert core.swap(reversed_ranker(old.path))
        assert sum(counted[1].rows) == 5  # the swapped-in bundle, before install
        core.set_canary("family", str(old.path), 10.0)
        assert core.experiments.canary is not None
        assert core.experiments.canary[1].primed  # the canary (a sibling of the default)
        # none of it counts as an answer: a canary's guardrails see readers' requests only
        assert sum(arm.answers for arm in core.stats().values()) == 0
    finally:
        core.close()
