"""Canary promotion against a real server following a real registry (`pytest -m faults -s`
prints the figures): client threads ask for recommendations and click what they are shown —
as readers would, more or less depending on the model — while `run_canary` steps the new
version's share up. A canary readers like more reaches production; one they click far less
is rolled back with the click-through reason and rejected. No request fails either way."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.helpers.bundles import two_versions
from tests.helpers.load import Load

from recsys.bundle.reader import load_bundle
from recsys.lifecycle import open_registry
from recsys.lifecycle.canary import CanaryPlan, run_canary
from recsys.lifecycle.guardrails import Guardrails
from recsys.serving.app import create_app
from recsys.serving.live import Live
from recsys.serving.local import serve_in_thread
from recsys.serving.service import RecommendationService

pytestmark = [pytest.mark.integration, pytest.mark.faults]

PLAN = CanaryPlan(
    steps=(30.0, 60.0, 100.0),
    step_s=3.0,
    settle_s=0.8,
    max_holds=2,
    rules=Guardrails(min_answers=20, min_impressions=40, max_p99_ratio=4.0),
)


@pytest.fixture(scope="module")
def family(trained_bundle: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Any:
    return two_versions(Path(trained_bundle["bundle"]), tmp_path_factory.mktemp("canary"))


class Readers:
    """Clicks on the lists they get: with ``rates[bundle_version]`` (seeded)."""

    def __init__(self, base: str, rates: dict[str, float]) -> None:
        self.base, self.rates = base, rates
        self.rng, self.lock = random.Random(0), threading.Lock()
        self.shown: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()

    def __call__(self, response: httpx.Response) -> str | None:
        meta = response.json()["metadata"]
        if not meta.get("impression_id"):
            return None
        version = meta["bundle_version"]
        with self.lock:
            self.shown[version] += 1
            click = self.rng.random() < self.rates[version]
        if click:
            user = response.url.path.rsplit("/", 1)[1]
            book = response.json()["recommendations"][0]["book_id"]
            body = {"impression_id": meta["impression_id"], "user_id": user, "book_id": book}
            status = httpx.post(f"{self.base}/feedback", json=body, timeout=10).status_code
            if status != 202:
                self.failed[str(status)] += 1
        return None


def canary_run(tmp_path: Path, family: dict[str, Any], canary_ctr: float) -> dict[str, Any]:
    registry = open_registry(f"sqlite:///{tmp_path / 'registry.db'}")
    old, new = family["old"], family["new"]
    registry.register(old, stage="production")
    registry.register(new)
    live = Live.from_config(
        {
            "store": {"url": f"sqlite:///{tmp_path / 'store.db'}"},
            "cache": {"enabled": False},
            "auth": {"enabled": False},
            "registry": {"url": registry.url, "poll_s": 0.2},
        }
    )
    users = [str(u) for u in load_bundle(old).known_histories.get_column("user_id")[:200]]

    def call(client: httpx.Client, i: int) -> httpx.Response:
        return client.post(f"/recommendations/users/{users[i % len(users)]}", json={"limit": 5})

    app = create_app(lambda: RecommendationService(load_bundle(old), 10.0, live=live))
    verdicts: list[tuple[float, str]] = []
    with serve_in_thread(app) as base:
        readers = Readers(base, {old.name: 0.4, new.name: canary_ctr})
        with Load(base, [call], clients=3, inspect=readers) as load:
            outcome = run_canary(
                registry, family["name"], new.name, PLAN, "ci",
                report=lambda p, v: verdicts.append((p, v.action)),
            )  # fmt: skip
            time.sleep(1.0)  # every server back on one version
            after = httpx.post(f"{base}/recommendations/users/{users[0]}", timeout=10).json()
    figures = load.report(f"canary at {canary_ctr:.0%} click-through against 40%")
    print(f"steps {verdicts}; shown {dict(readers.shown)}; promoted {outcome.promoted}")
    assert figures["failed"] == 0, load.outcomes
    assert not readers.failed, readers.failed
    result = {
        "outcome": outcome,
        "verdicts": verdicts,
        "served_after": after["metadata"]["bundle_version"],
        "stage": registry.get(family["name"], new.name).stage,
        "history": [e["event"] for e in registry.history(family["name"], new.name)],
        "shown": readers.shown,
    }
    registry.close()
    return result


def test_a_canary_readers_like_is_promoted(tmp_path: Path, family: dict[str, Any]) -> None:
    run = canary_run(tmp_path, family, canary_ctr=0.5)  # (equal rates fail 1 run in 40)
    assert run["outcome"].promoted, run["outcome"].reasons
    assert [p for p, action in run["verdicts"] if action == "advance"] == [30.0, 60.0]
    assert run["stage"] == "production"
    assert run["served_after"] == family["new"].name
    assert run["shown"][family["new"].name] > 0  # it really took traffic before promotion
    assert "canary_advance" in run["history"]


def test_a_canary_readers_ignore_is_rolled_back(tmp_path: Path, family: dict[str, Any]) -> None:
    run = canary_run(tmp_path, family, canary_ctr=0.02)
    outcome = run["outcome"]
    assert not outcome.promoted
    assert outcome.reasons[0].startswith("click-through"), outcome.reasons
    assert run["stage"] == "rejected"
    assert run["served_after"] == family["old"].name
    assert run["history"][-2:] == ["canary_rollback", "rejected"]
