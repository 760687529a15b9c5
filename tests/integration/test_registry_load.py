"""Promotion and rollback reaching running servers under load, on both runners (`pytest -m
faults -s` prints the figures): a server follows the registry's production version; the new
version is promoted, then rolled back, while client threads count every answer. Zero failed
requests (a transport error is a failure too), answers switch within a bound, and each list is
the one the version it names gives (the two versions' rankers order candidates oppositely)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.helpers.bundles import two_versions
from tests.helpers.load import Load
from tests.helpers.swaps import VersionLog, expected_lists

from recsys.bundle.reader import load_bundle
from recsys.lifecycle import Registry, open_registry
from recsys.serving import ray_runner
from recsys.serving.app import create_app
from recsys.serving.live import Live
from recsys.serving.local import free_port, serve_in_thread
from recsys.serving.service import RecommendationService

pytestmark = [pytest.mark.integration, pytest.mark.faults]

USERS, LIMIT = 20, 5
CONFIG = Path(__file__).resolve().parents[2] / "serving" / "config.yaml"


@pytest.fixture(scope="module")
def family(trained_bundle: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Any:
    return two_versions(Path(trained_bundle["bundle"]), tmp_path_factory.mktemp("registry"))


@pytest.fixture(scope="module")
def users(family: dict[str, Any]) -> list[str]:
    frame = load_bundle(family["old"]).known_histories
    return [str(u) for u in frame.get_column("user_id")[:USERS]]


@pytest.fixture(scope="module")
def lists(family: dict[str, Any], users: list[str]) -> dict[str, dict[str, frozenset[str]]]:
    out = {p.name: expected_lists(p, users, LIMIT) for p in (family["old"], family["new"])}
    old, new = out.values()
    assert all(old[u] != new[u] for u in users), "the two versions must answer differently"
    return out


def user_calls(users: list[str]) -> list[Callable[[httpx.Client, int], httpx.Response]]:
    def call(client: httpx.Client, i: int) -> httpx.Response:
        return client.post(f"/recommendations/users/{users[i % len(users)]}", json={"limit": LIMIT})

    return [call]


def promote_then_roll_back(
    base: str, registry: Registry, family: dict[str, Any], users: list[str], bound_s: float
) -> dict[str, Any]:
    """Under load: promote the new version, then roll back; each must switch every answer
    within ``bound_s`` and fail no request."""
    name, old, new = family["name"], family["old"].name, family["new"].name
    check = VersionLog(family["lists"])
    with Load(base, user_calls(users), clients=3, inspect=check) as load:
        time.sleep(1)
        promoted = time.monotonic()
        registry.promote(name, new, "ci", "under load")
        to_new = check.settle(promoted, new, bound_s)
        rolled = time.monotonic()
        registry.rollback(name, "ci", "under load")
        to_old = check.settle(rolled, old, bound_s)
    for start, end, version in ((promoted, rolled, new), (rolled, float("inf"), old)):
        late = [t for t, v in check.since(start, end) if v != version and t - start > bound_s]
        assert not late, f"{len(late)} answers of the other version after {bound_s} s"
    assert {v for _, v in check.since(0)} == {old, new}
    assert load.answers["personalized"] > 0
    return {"load": load, "switch_s": (round(to_new, 2), round(to_old, 2))}


def report(run: dict[str, Any], what: str) -> None:
    """Print the figures (`-s`) and assert the guarantee: no failed request, no list that is
    not its version's."""
    load: Load = run["load"]
    figures = load.report(f"{what}: promotion then rollback")
    print(f"{what}: answers switched {run['switch_s']} s after the promotion and the rollback")
    assert figures["failed"] == 0, load.outcomes
    assert figures["violations"] == 0, load.violations


def test_promotion_and_rollback_under_load_local(
    tmp_path: Path, family: dict[str, Any], users: list[str], lists: Any
) -> None:
    registry = open_registry(f"sqlite:///{tmp_path / 'registry.db'}")
    registry.register(family["old"], stage="production")
    registry.register(family["new"])
    live = Live.from_config(
        {
            "cache": {"enabled": False},
            "auth": {"enabled": False},
            "registry": {"url": registry.url, "poll_s": 0.2},
        }
    )
    app = create_app(lambda: RecommendationService(load_bundle(family["old"]), 10.0, live=live))
    with serve_in_thread(app) as base:
        run = promote_then_roll_back(base, registry, {**family, "lists": lists}, users, 10.0)
    registry.close()
    report(run, "local runner")


def test_promotion_and_rollback_under_load_ray(
    tmp_path: Path, family: dict[str, Any], users: list[str], lists: Any
) -> None:
    registry = open_registry(f"sqlite:///{tmp_path / 'registry.db'}")
    registry.register(family["old"], stage="production")
    registry.register(family["new"])
    port = free_port()
    live = {
        "store": None,
        "cache": {"enabled": False},
        "auth": {"enabled": False},
        "registry": {"url": registry.url, "poll_s": 0.5},
    }
    config = ray_runner.with_overrides(
        ray_runner.load_config(CONFIG),
        str(family["old"]),
        host="127.0.0.1",
        port=port,
        live=live,
        topology="fused",
        ingress_replicas=2,
        stage_timeout_ms=2000,
    )
    ray_runner.start_ray(num_cpus=2)
    import ray

    try:
        ray_runner.deploy(config)
        deadline = time.monotonic() + 30
        while len([s for s in registry.servers() if s.fresh]) < 2:  # each replica reports
            assert time.monotonic() < deadline, registry.servers()
            time.sleep(0.1)
        base = f"http://127.0.0.1:{port}"
        run = promote_then_roll_back(base, registry, {**family, "lists": lists}, users, 20.0)
    finally:
        ray.shutdown()
        registry.close()
    report(run, "Ray Serve, fused, 2 ingress replicas")
