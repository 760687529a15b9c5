"""Ray Serve under faults (`pytest -m faults -s` prints the figures): the chained topology with
two replicas of every deployment (serving/config.production.yaml never runs fewer: it
autoscales each from three), called over real HTTP by client threads that count every outcome
(a transport error is a failure too).

* a hot swap between two **different** models under load: no failed request, and no response
  whose list belongs to the other version than the one it names (a response that mixed the
  versions' stages would show the other version's order);
* a replica of each deployment killed with SIGKILL under load: no failed request;
* a rolling restart (new builder args) under load: no failed request.

Serve runs with HAProxy as its ingress (``ray.haproxy``): it replays a request whose ingress
replica died before answering; the Python proxy answers those 500.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.helpers.bundles import reversed_ranker
from tests.helpers.load import Load
from tests.helpers.swaps import expected_lists

from recsys.bundle.reader import load_bundle
from recsys.serving import ray_runner
from recsys.serving.local import free_port

pytestmark = [pytest.mark.integration, pytest.mark.faults]

CONFIG = Path(__file__).resolve().parents[2] / "serving" / "config.yaml"
USERS = 20
LIMIT = 5


class Cluster:
    """The recsys app on a local Ray, chained, two replicas per deployment."""

    def __init__(self, bundle: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        live = {"store": None, "cache": {"enabled": False}, "auth": {"enabled": False}}
        self.config = ray_runner.with_overrides(
            ray_runner.load_config(CONFIG),
            str(bundle),
            host="127.0.0.1",
            port=self.port,
            live=live,
            topology="chained",
            ingress_replicas=2,
            retrieval_replicas=2,
            ranking_replicas=2,
            stage_timeout_ms=2000,
        )
        ray_runner.deploy(self.config)

    def version(self) -> str:
        return str(httpx.get(f"{self.base}/readyz", timeout=10).json()["bundle_version"])

    def healthy(self, timeout_s: float = 120) -> None:
        """Wait until every deployment runs all its replicas again."""
        from ray import serve

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            app = serve.status().applications.get(ray_runner.APP_NAME)
            if (
                app
                and app.status == "RUNNING"
                and all(
                    d.status == "HEALTHY" and d.replica_states.get("RUNNING", 0) == 2
                    for d in app.deployments.values()
                )
            ):
                return
            time.sleep(0.2)
        raise AssertionError(f"not healthy after {timeout_s} s: {serve.status()}")


def replica_pids(deployment: str) -> list[int]:
    """Processes of a deployment's replicas (Ray titles them ``ray::ServeReplica:<app>:<name>``)."""
    title = f"ServeReplica:{ray_runner.APP_NAME}:{deployment}".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if title in (proc / "cmdline").read_bytes():
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


@pytest.fixture(scope="module")
def users(trained_bundle: dict[str, Any]) -> list[str]:
    frame = load_bundle(trained_bundle["bundle"]).known_histories
    return [str(u) for u in frame.get_column("user_id")[:USERS]]


@pytest.fixture(scope="module")
def cluster(trained_bundle: dict[str, Any]) -> Iterator[Cluster]:
    if shutil.which("haproxy") is None:
        pytest.skip("haproxy is not installed (make install installs it)")
    ray_runner.start_ray(num_cpus=4, haproxy=True)  # logical CPUs: 6 replicas at 0.5 each
    import ray

    try:
        yield Cluster(load_bundle(trained_bundle["bundle"]).path)
    finally:
        ray.shutdown()
        for key in ray_runner.HAPROXY_ENV:
            os.environ.pop(key, None)


def user_calls(users: list[str]) -> list[Callable[[httpx.Client, int], httpx.Response]]:
    def call(client: httpx.Client, i: int) -> httpx.Response:
        return client.post(f"/recommendations/users/{users[i % len(users)]}", json={"limit": LIMIT})

    return [call]


def test_hot_swap_between_two_models_under_load(
    cluster: Cluster, trained_bundle: dict[str, Any], users: list[str]
) -> None:
    old = load_bundle(trained_bundle["bundle"]).path
    new = reversed_ranker(old)
    expected = {
        old.name: expected_lists(old, users, LIMIT),
        new.name: expected_lists(new, users, LIMIT),
    }
    differ = sum(expected[old.name][u] != expected[new.name][u] for u in users)
    assert differ == len(users), "the two models must answer differently for every user"

    def inspect(response: httpx.Response) -> str | None:
        body = response.json()
        meta = body["metadata"]
        if meta["source"] != "personalized":
            return None
        user = response.url.path.rsplit("/", 1)[1]
        books = frozenset(r["book_id"] for r in body["recommendations"])
        named = meta["bundle_version"]
        if named not in expected:
            return f"unknown version {named}"
        (other,) = set(expected) - {named}
        if books == expected[other][user]:
            return "mixed: the other version's list"
        return None if books == expected[named][user] else "list of neither version"

    with Load(cluster.base, user_calls(users), clients=4, inspect=inspect) as load:
        time.sleep(2)
        ray_runner.deploy(ray_runner.with_swapped_bundle(cluster.config, str(new)))
        deadline = time.monotonic() + 60
        while cluster.version() != new.name:
            assert time.monotonic() < deadline, "the new bundle never went live"
            time.sleep(0.2)
        time.sleep(2)
    figures = load.report("hot swap, two models, 2 replicas per deployment")
    assert figures["failed"] == 0, load.outcomes
    assert figures["violations"] == 0, load.violations
    assert load.answers["personalized"] > 0
    cluster.config = ray_runner.with_swapped_bundle(cluster.config, str(new))


@pytest.mark.parametrize("deployment", ["Retrieval", "Ranking", "Ingress"])
def test_replica_killed_under_load(cluster: Cluster, users: list[str], deployment: str) -> None:
    cluster.healthy()
    pids = replica_pids(deployment)
    assert len(pids) == 2, pids
    # Serve reloads HAProxy with the new replica set, which closes idle kept-alive client
    # connections: a client replays a request sent on one at that instant (replay_closed).
    with Load(cluster.base, user_calls(users), clients=4, replay_closed=True) as load:
        time.sleep(2)
        os.kill(pids[0], signal.SIGKILL)
        time.sleep(3)
        cluster.healthy()
        time.sleep(1)
    figures = load.report(f"{deployment} replica killed (SIGKILL), 2 replicas")
    assert figures["failed"] == 0, load.outcomes
    assert pids[0] not in replica_pids(deployment)
    body = httpx.post(f"{cluster.base}/recommendations/users/{users[0]}", timeout=10).json()
    assert body["metadata"]["source"] == "personalized"


@pytest.mark.slow  # about a minute; the hot swap and the replica kills above stay in `make test`
def test_rolling_restart_under_load(cluster: Cluster, users: list[str]) -> None:
    cluster.healthy()
    before = {name: set(replica_pids(name)) for name in ("Ingress", "Retrieval", "Ranking")}
    app = ray_runner.recsys_app(cluster.config)
    restarted = ray_runner.with_overrides(
        cluster.config, batch_wait_timeout_ms=float(app["args"].get("batch_wait_timeout_ms", 0)) + 1
    )
    restarted_app = ray_runner.recsys_app(restarted)
    restarted_app["args"]["live"]["cache"]["l1_ttl_s"] = 3.0  # the ingress restarts too
    with Load(cluster.base, user_calls(users), clients=4, replay_closed=True) as load:
        time.sleep(2)
        ray_runner.deploy(restarted)
        cluster.healthy()
        time.sleep(1)
    figures = load.report("rolling restart (new builder args), 2 replicas")
    assert figures["failed"] == 0, load.outcomes
    for name, pids in before.items():
        assert not pids & set(replica_pids(name)), f"{name} replicas were not replaced"
    cluster.config = restarted
