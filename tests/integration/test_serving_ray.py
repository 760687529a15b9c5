"""Real Ray Serve on loopback, deployed from serving/config.yaml, called over real HTTP.

Chained topology (Ingress -> Retrieval -> Ranking) for every endpoint, fallbacks by an unknown
user, a ranker that raises and a stage over its budget, a hot swap between two different
models under concurrent load with zero failed requests, and a corrupt bundle refused while the
old one keeps serving; then the fused topology on the same endpoints.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.helpers.bundles import copy_version, reversed_ranker
from tests.helpers.load import Load
from tests.helpers.parity import assert_same, in_process, parity_users, served
from tests.helpers.swaps import VersionLog, expected_lists

from recsys.bundle.reader import load_bundle
from recsys.serving import ray_runner
from recsys.serving.local import free_port

pytestmark = pytest.mark.integration

CONFIG = Path(__file__).resolve().parents[2] / "serving" / "config.yaml"


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[int]:
    """A local Ray; yields the loopback port of Serve's HTTP proxy (fixed once started)."""
    ray_runner.start_ray(num_cpus=2)
    import ray

    yield free_port()
    ray.shutdown()  # serve.shutdown() can hang for 30 s; tearing Ray down stops Serve too


def deploy(bundle: Path, port: int, **args: Any) -> tuple[dict[str, Any], str]:
    # No response cache: every request goes through the stages under test.
    live = {"store": None, "cache": {"enabled": False}, "auth": {"enabled": False}}
    config = ray_runner.with_overrides(
        ray_runner.load_config(CONFIG), str(bundle), host="127.0.0.1", port=port, live=live, **args
    )
    ray_runner.deploy(config)
    return config, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def chained(
    ray_cluster: int, trained_bundle: dict[str, Any]
) -> Iterator[tuple[httpx.Client, dict[str, Any]]]:
    bundle = load_bundle(trained_bundle["bundle"]).path
    config, base = deploy(
        bundle, ray_cluster, topology="chained", stage_timeout_ms=1500, drills=True
    )
    with httpx.Client(base_url=base, timeout=30) as client:
        yield client, config


def known_user(trained_bundle: dict[str, Any]) -> tuple[str, list[str]]:
    user_id, history = load_bundle(trained_bundle["bundle"]).histories.row(0)
    return str(user_id), list(history)


def check_endpoints(client: httpx.Client, trained_bundle: dict[str, Any]) -> None:
    user_id, history = known_user(trained_bundle)
    response = client.post(
        f"/recommendations/users/{user_id}", json={"limit": 7}, headers={"X-Request-ID": "r-1"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["metadata"]["source"] == "personalized"
    assert body["metadata"]["request_id"] == "r-1"
    assert response.headers["X-Request-ID"] == "r-1"
    ids = [i["book_id"] for i in body["recommendations"]]
    assert len(ids) == len(set(ids)) == 7
    assert not set(ids) & set(history)
    scores = [i["confidence_score"] for i in body["recommendations"]]
    assert scores == sorted(scores, reverse=True)
    assert all(i["title"] and i["reasoning"] for i in body["recommendations"])

    unknown = client.post("/recommendations/users/nobody", json={"limit": 4}).json()
    assert (unknown["metadata"]["source"], unknown["metadata"]["fallback_reason"]) == (
        "popularity",
        "unknown_user",
    )
    similar = client.post("/recommendations/books/b5", json={"limit": 5}).json()
    assert len(similar["recommendations"]) == 5
    assert "b5" not in {i["book_id"] for i in similar["recommendations"]}
    v2 = client.post(
        "/v2/recommendations/similar-books",
        json={"book_id": "b5", "limit": 4, "user_context": {"user_id": user_id}},
    )
    assert v2.status_code == 200
    assert len(v2.json()["recommendations"]) == 4
    hybrid = client.post(
        "/recommendations/hybrid", json={"history": ["b1", "b2"], "seed_books": ["b3"]}
    ).json()
    assert hybrid["metadata"]["source"] == "hybrid"
    assert not {i["book_id"] for i in hybrid["recommendations"]} & {"b1", "b2", "b3"}
    trending = client.get("/recommendations/trending", params={"limit": 3}).json()
    assert len(trending["recommendations"]) == 3

    # Client errors are 4xx with a message, never 500.
    assert client.post("/recommendations/books/no-such-book").status_code == 404
    assert client.post("/recommendations/hybrid", json={"seed_books": ["zzz"]}).status_code == 404
    for bad in ({"limit": 0}, {"limit": 51}, {"limit": "ten"}):
        bad_response = client.post(f"/recommendations/users/{user_id}", json=bad)
        assert bad_response.status_code == 422
        assert bad_response.json()["detail"]
    malformed = client.post(
        f"/recommendations/users/{user_id}",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert malformed.status_code == 422
    assert client.get("/recommendations/trending", params={"limit": 1000}).status_code == 422

    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["status"] == "ready"
    assert client.get("/docs").status_code == 200
    assert "/recommendations/hybrid" in client.get("/openapi.json").json()["paths"]
    # the web app comes from the same app on this runner too
    assert client.get("/", follow_redirects=True).url.path == "/app/"
    assert 'src="app.js"' in client.get("/app/").text
    assert "javascript" in client.get("/app/app.js").headers["content-type"]


def test_chained_endpoints(
    chained: tuple[httpx.Client, dict[str, Any]], trained_bundle: dict[str, Any]
) -> None:
    client, _ = chained
    check_endpoints(client, trained_bundle)
    metrics = client.get("/metrics").text
    assert 'recsys_stage_latency_seconds_count{stage="retrieval"}' in metrics
    assert 'recsys_stage_latency_seconds_count{stage="ranking"}' in metrics
    # the business metrics come through the serving core's registry under Ray as well
    version = load_bundle(trained_bundle["bundle"]).version
    assert f'recsys_list_diversity_count{{bundle="{version}",endpoint="user"}}' in metrics
    assert f'recsys_catalogue_coverage{{bundle="{version}"}}' in metrics
    assert f'recsys_bundle_offline_metric{{bundle="{version}",metric="recall@20"}}' in metrics


def test_chained_serves_the_in_process_lists(
    chained: tuple[httpx.Client, dict[str, Any]], trained_bundle: dict[str, Any]
) -> None:
    """Concurrent callers through Ingress -> Retrieval -> Ranking get the lists the bundle
    gives in process, one request at a time (#20's parity)."""
    client, _ = chained
    users = parity_users(trained_bundle["bundle"])
    expected = in_process(trained_bundle["bundle"], users, 10)
    assert_same(expected, served(str(client.base_url), users, 10))


def test_chained_fallbacks(
    chained: tuple[httpx.Client, dict[str, Any]], trained_bundle: dict[str, Any]
) -> None:
    from ray import serve

    client, _ = chained
    user_id, history = known_user(trained_bundle)
    ranking = serve.get_deployment_handle("Ranking", app_name=ray_runner.APP_NAME)
    retrieval = serve.get_deployment_handle("Retrieval", app_name=ray_runner.APP_NAME)

    ranking.inject.remote(fail_next=1).result()  # the ranker raises once
    body = client.post(f"/recommendations/users/{user_id}", json={"limit": 5}).json()
    assert body["metadata"]["source"] == "popularity"
    assert body["metadata"]["fallback_reason"] == "stage_error"
    assert len(body["recommendations"]) == 5
    assert not {i["book_id"] for i in body["recommendations"]} & set(history)

    retrieval.inject.remote(slow_next_s=3.0).result()  # retrieval overruns the 1.5 s budget
    started = time.perf_counter()
    body = client.post(f"/recommendations/users/{user_id}", json={"limit": 5}).json()
    assert body["metadata"]["fallback_reason"] == "timeout"
    assert time.perf_counter() - started < 3.0
    time.sleep(2.0)  # let the slow call drain before the next test
    assert client.post(f"/recommendations/users/{user_id}").json()["metadata"]["source"] == (
        "personalized"
    )
    metrics = client.get("/metrics").text
    assert 'recsys_fallbacks_total{reason="stage_error"} 1.0' in metrics
    assert 'recsys_fallbacks_total{reason="timeout"} 1.0' in metrics


def test_hot_swap_under_load_then_corrupt_bundle_refused(
    chained: tuple[httpx.Client, dict[str, Any]], trained_bundle: dict[str, Any]
) -> None:
    """A swap to a genuinely different model (negated ranker) under four clients: no request
    fails (transport errors count), every list is the one the version it names gives, and
    answers switch to the new version; then a corrupt bundle is refused."""
    client, config = chained
    old = load_bundle(trained_bundle["bundle"]).path
    new = reversed_ranker(old)
    users = [str(u) for u in load_bundle(old).known_histories.get_column("user_id")[:20]]
    log = VersionLog(
        {old.name: expected_lists(old, users, 5), new.name: expected_lists(new, users, 5)}
    )

    def call(http: httpx.Client, i: int) -> httpx.Response:
        return http.post(f"/recommendations/users/{users[i % len(users)]}", json={"limit": 5})

    with Load(str(client.base_url), [call], clients=4, inspect=log) as load:
        time.sleep(0.5)
        started = time.monotonic()
        ray_runner.deploy(ray_runner.with_swapped_bundle(config, str(new)))
        log.settle(started, new.name, bound_s=60)
    figures = load.report("Ray chained, hot swap between two models")
    assert figures["failed"] == 0, load.outcomes
    assert figures["violations"] == 0, load.violations
    assert set(load.answers) == {"personalized"}, load.answers
    assert {version for _, version in log.seen} == {old.name, new.name}

    corrupt = copy_version(old, old.name + "-corrupt", corrupt=True)
    ray_runner.deploy(ray_runner.with_swapped_bundle(config, str(corrupt)))
    metrics = ""
    deadline = time.monotonic() + 30
    while 'recsys_bundle_swaps_total{result="refused"} 1.0' not in metrics:
        assert time.monotonic() < deadline, "the corrupt bundle was never refused"
        time.sleep(0.2)
        metrics = client.get("/metrics").text
    assert client.get("/readyz").json()["bundle_version"] == new.name
    body = client.post(f"/recommendations/users/{users[0]}", json={"limit": 5}).json()
    assert (body["metadata"]["source"], body["metadata"]["bundle_version"]) == (
        "personalized",
        new.name,
    )


def test_fused_topology(
    ray_cluster: int, chained: tuple[httpx.Client, dict[str, Any]], trained_bundle: dict[str, Any]
) -> None:
    bundle = load_bundle(trained_bundle["bundle"]).path  # replaces the chained application
    _, base = deploy(bundle, ray_cluster, topology="fused", stage_timeout_ms=1500)
    with httpx.Client(base_url=base, timeout=30) as client:
        check_endpoints(client, trained_bundle)
        metrics = client.get("/metrics").text
        assert 'recsys_stage_latency_seconds_count{stage="ranking"}' in metrics
    users = parity_users(bundle)
    assert_same(in_process(bundle, users, 10), served(base, users, 10))


def test_experiments_through_user_config(
    ray_cluster: int, chained: tuple[httpx.Client, dict[str, Any]], trained_bundle: dict[str, Any]
) -> None:
    """Variant traffic and a second bundle version arrive by `reconfigure` (no restart)."""
    old = load_bundle(trained_bundle["bundle"])
    other = copy_version(old.path, old.version + "-exp")
    config, base = deploy(old.path, ray_cluster, topology="fused", stage_timeout_ms=1500)
    experiments = {
        "experiments": [
            {
                "name": "ray_ab",
                "variants": {"control": 50, "treatment": 50},
                "settings": {"treatment": {"bundle": str(other)}},
            }
        ]
    }
    swapped = ray_runner.with_swapped_bundle(config, str(old.path))
    for entry in ray_runner.recsys_app(swapped)["deployments"]:
        if entry["name"] == "Ingress":
            entry["user_config"]["experiments"] = experiments
    ray_runner.deploy(swapped)
    user_id, _ = known_user(trained_bundle)
    with httpx.Client(base_url=base, timeout=30) as client:
        deadline = time.monotonic() + 60
        meta: dict[str, Any] = {}
        while meta.get("experiment") != "ray_ab":
            assert time.monotonic() < deadline, meta
            time.sleep(0.2)
            meta = client.post(f"/recommendations/users/{user_id}").json()["metadata"]
        forced = client.post(
            f"/recommendations/users/{user_id}", headers={"X-Experiment-Variant": "treatment"}
        ).json()["metadata"]
        assert (forced["variant"], forced["bundle_version"]) == ("treatment", other.name)


def test_autoscaling_applies_to_every_deployment(
    ray_cluster: int, chained: tuple[httpx.Client, dict[str, Any]], trained_bundle: dict[str, Any]
) -> None:
    """`autoscaling` in the args (as serving/config.production.yaml has it) gives every
    deployment Serve's autoscaling config instead of a fixed replica count, and it serves."""
    from ray.serve.context import _get_global_client

    bundle = load_bundle(trained_bundle["bundle"]).path  # replaces the chained application
    scaling = {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 2}
    _, base = deploy(
        bundle, ray_cluster, topology="chained", stage_timeout_ms=1500, autoscaling=scaling
    )
    with httpx.Client(base_url=base, timeout=30) as client:
        user, _ = known_user(trained_bundle)
        answer = client.post(f"/recommendations/users/{user}", json={"limit": 5})
        assert answer.status_code == 200, answer.text
        assert answer.json()["metadata"]["source"] == "personalized"
    details = _get_global_client().get_serve_details()
    deployments = details["applications"]["recsys"]["deployments"]
    assert set(deployments) == {"Ingress", "Retrieval", "Ranking"}
    for name, found in deployments.items():
        config = found["deployment_config"]["autoscaling_config"]
        got = (config["min_replicas"], config["max_replicas"], config["target_ongoing_requests"])
        assert got == (1, 2, 2.0), name
