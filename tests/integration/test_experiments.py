"""A/B experiments over real HTTP: stable assignment, variants served by other bundle versions
or settings, the override header, impressions and clicks with a report, and config updates
applied with no restart and no failed request."""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml
from omegaconf import OmegaConf
from tests.helpers.bundles import copy_version

from recsys.bundle.reader import load_bundle
from recsys.jobs.experiments_report import main as report_main
from recsys.serving.app import create_app
from recsys.serving.experiments import Experiment, Plan, wilson
from recsys.serving.live import Live
from recsys.serving.local import serve_in_thread
from recsys.serving.service import RecommendationService

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def setup(
    trained_bundle: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    folder = tmp_path_factory.mktemp("experiments")
    bundle = load_bundle(trained_bundle["bundle"])
    other = copy_version(bundle.path, bundle.version + "-b")
    file = folder / "experiments.yaml"
    file.write_text("experiments: []\n")
    live = Live.from_config(
        {
            "store": {"url": f"sqlite:///{folder / 'store.db'}"},
            "cache": {"enabled": False},
            "auth": {"enabled": False},
            "experiments": {"file": str(file), "poll_s": 0.1},
        }
    )
    app = create_app(lambda: RecommendationService(bundle, 10.0, live=live))
    with serve_in_thread(app) as base, httpx.Client(base_url=base, timeout=30) as client:
        yield {
            "client": client,
            "app": app,
            "file": file,
            "bundle": bundle,
            "other": other,
            "live": live,
            "store_url": f"sqlite:///{folder / 'store.db'}",
        }


def write_and_wait(setup: dict[str, Any], raw: dict[str, Any]) -> None:
    """Write the experiments file and wait until the watcher has looked at it."""
    watcher = setup["app"].state.core.watcher
    before = watcher.mtime
    time.sleep(0.02)  # a distinct mtime
    setup["file"].write_text(yaml.safe_dump(raw))
    deadline = time.monotonic() + 10
    while watcher.mtime == before:
        assert time.monotonic() < deadline, "the experiments file was never read"
        time.sleep(0.05)


def apply(setup: dict[str, Any], raw: dict[str, Any]) -> None:
    write_and_wait(setup, raw)
    error = setup["app"].state.core.watcher.error
    assert error is None, error


def users(setup: dict[str, Any], n: int) -> list[str]:
    ids = setup["bundle"].known_histories.get_column("user_id").to_list()
    return [str(u) for u in ids[:n]]


def test_assignment_is_stable_and_follows_the_split() -> None:
    experiment = Experiment("ranker_v2", {"control": 70, "treatment": 30})
    again = Experiment("ranker_v2", {"control": 70, "treatment": 30})  # another replica
    ids = [f"user-{i}" for i in range(20_000)]
    first = [experiment.assign(u) for u in ids]
    assert first == [again.assign(u) for u in ids]
    share = collections.Counter(first)["treatment"] / len(ids)
    assert 0.28 < share < 0.32
    salted = Experiment("ranker_v2", {"control": 70, "treatment": 30}, salt="other")
    moved = sum(a != b for a, b in zip(first, (salted.assign(u) for u in ids), strict=True))
    assert moved > 0.3 * len(ids)  # a new salt reshuffles users
    with pytest.raises(Exception, match="sum to 100"):
        Plan.parse({"experiments": [{"name": "x", "variants": {"a": 50, "b": 40}}]})
    with pytest.raises(Exception, match="at most one"):
        Plan.parse(
            {
                "experiments": [
                    {"name": "x", "variants": {"a": 50, "b": 50}},
                    {"name": "y", "variants": {"a": 50, "b": 50}},
                ]
            }
        )


def test_variants_serve_other_bundles_and_settings(setup: dict[str, Any]) -> None:
    client = setup["client"]
    experiment = {
        "name": "bundle_b",
        "variants": {"control": 50, "treatment": 50},
        "settings": {"treatment": {"bundle": str(setup["other"])}},
    }
    apply(setup, {"experiments": [experiment]})
    seen: dict[str, set[str]] = collections.defaultdict(set)
    reference = Experiment("bundle_b", {"control": 50, "treatment": 50})
    for user in users(setup, 40):
        meta = client.post(f"/recommendations/users/{user}", json={"limit": 5}).json()["metadata"]
        assert meta["experiment"] == "bundle_b"
        assert meta["variant"] == reference.assign(user)
        seen[meta["variant"]].add(meta["bundle_version"])
    assert seen["control"] == {setup["bundle"].version}
    assert seen["treatment"] == {setup["other"].name}  # two versions served at once
    user = users(setup, 1)[0]
    setup["live"].impressions.flush()
    counts = setup["live"].stores.experiments.experiment_counts
    logged = counts("bundle_b")
    forced = client.post(
        f"/recommendations/users/{user}", headers={"X-Experiment-Variant": "treatment"}
    ).json()["metadata"]
    assert (forced["variant"], forced["bundle_version"]) == ("treatment", setup["other"].name)
    setup["live"].impressions.flush()
    assert counts("bundle_b") == logged  # a forced variant is testing, not experiment data
    bad = client.post(f"/recommendations/users/{user}", headers={"X-Experiment-Variant": "nope"})
    assert bad.status_code == 422
    # A recommender setting as a variant: two-tower answers without the ranker.
    retrieval = {
        "name": "retrieval_only",
        "variants": {"control": 50, "retrieval": 50},
        "settings": {"retrieval": {"pipeline": "retrieval"}},
    }
    apply(setup, {"experiments": [retrieval]})
    body = client.post(
        f"/recommendations/users/{user}",
        json={"limit": 5},
        headers={"X-Experiment-Variant": "retrieval"},
    ).json()
    assert body["metadata"]["variant"] == "retrieval"
    reasons = {i["reasoning"] for i in body["recommendations"]}
    # the two-tower's own reason; series volumes say where they stand (reading order)
    assert "matches your reading history" in reasons
    assert all(
        r == "matches your reading history" or "series starts here" in r or r.startswith("next in")
        for r in reasons
    )


def test_preview_follows_the_readers_arm(setup: dict[str, Any]) -> None:
    """The console's preview shows each reader what their arm serves: its bundle and, for a
    retrieval-only arm, the two-tower list with no ranked candidates."""
    client = setup["client"]
    arms = {
        "name": "arms",
        "variants": {"control": 50, "treatment": 50},
        "settings": {"treatment": {"bundle": str(setup["other"]), "pipeline": "retrieval"}},
    }
    apply(setup, {"experiments": [arms]})
    reference = Experiment("arms", {"control": 50, "treatment": 50})
    seen = set()
    for user in users(setup, 12):
        served = client.post(f"/recommendations/users/{user}", json={"limit": 5}).json()
        view = client.post(f"/users/{user}/preview", json={"limit": 5}).json()
        variant = reference.assign(user)
        seen.add(variant)
        assert (view["experiment"], view["variant"]) == ("arms", variant)
        assert view["bundle_version"] == served["metadata"]["bundle_version"]
        assert [b["book_id"] for b in view["served"]] == [
            b["book_id"] for b in served["recommendations"]
        ]
        assert view["status"] == "personal"
        assert bool(view["candidates"]) == (variant == "control")  # no ranker in treatment
    assert seen == {"control", "treatment"}
    apply(setup, {"experiments": []})


def test_impressions_clicks_and_report(
    setup: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    client = setup["client"]
    experiment = {"name": "ctr_test", "variants": {"control": 50, "treatment": 50}}
    apply(setup, {"experiments": [experiment]})
    served = collections.Counter()
    for user in users(setup, 60):
        body = client.post(f"/recommendations/users/{user}", json={"limit": 3}).json()
        variant = body["metadata"]["variant"]
        served[variant] += 1
        # treatment readers click every list, control readers every other one
        if variant == "treatment" or served[variant] % 2 == 0:
            click = {
                "impression_id": body["metadata"]["impression_id"],
                "user_id": user,
                "book_id": body["recommendations"][0]["book_id"],
                "type": "click",
            }
            assert client.post("/feedback", json=click).status_code == 202
    # a click on a list served to someone else is refused and counts nowhere
    unclicked = next(u for u in users(setup, 60) if u != user)  # any reader whose list this was not
    stolen = {
        "request_id": body["metadata"]["impression_id"],  # the field's former name
        "user_id": unclicked,
        "book_id": body["recommendations"][0]["book_id"],
    }
    refused = client.post("/feedback", json=stolen)
    assert refused.status_code == 403
    assert "another user" in refused.json()["detail"]
    setup["live"].impressions.flush()  # write what the background writer has not yet
    counts = setup["live"].stores.experiments.experiment_counts("ctr_test")
    assert counts["control"][0] == served["control"]
    assert counts["treatment"] == (served["treatment"], served["treatment"])
    assert counts["control"][1] == served["control"] // 2
    cfg = OmegaConf.create(
        {"name": "ctr_test", "control": "control", "store_url": setup["store_url"], "out": None}
    )
    rows = report_main(cfg)
    assert rows["treatment"]["ctr"] == 1.0
    assert rows["control"]["ctr_95_low"] < rows["control"]["ctr"] < rows["control"]["ctr_95_high"]
    assert rows["treatment"]["diff_95_low"] > 0  # a real difference at this size
    assert "ctr_test" in capsys.readouterr().out
    # The same figures over HTTP, with the experiment as applied.
    overview = client.get("/experiments").json()
    assert overview["bundle_version"] == setup["bundle"].version
    (status,) = overview["experiments"]
    assert (status["name"], status["active"]) == ("ctr_test", True)
    assert status["variants"] == {"control": 50.0, "treatment": 50.0}
    optional = dict.fromkeys(("diff_vs_control", "diff_95_low", "diff_95_high"))
    for variant, row in rows.items():
        assert status["results"][variant] == {**optional, **row}
    assert status["results"]["treatment"]["impressions"] == served["treatment"]
    # over time: all of it in the current hour's bucket (or the two around an hour's turn)
    series = client.get("/experiments/ctr_test/series", params={"bucket_s": 3600}).json()
    assert series["bucket_s"] == 3600
    per_variant = collections.Counter()
    for point in series["points"]:
        assert point["at"] % 3600 == 0
        assert point["ctr_95_low"] <= point["ctr"] <= point["ctr_95_high"]
        per_variant[point["variant"]] += point["impressions"]
    assert per_variant == served
    assert client.get("/experiments/ctr_test/series", params={"bucket_s": 5}).status_code == 422
    low, high = wilson(50, 100)
    assert low == pytest.approx(0.404, abs=1e-3)
    assert high == pytest.approx(0.596, abs=1e-3)


def test_caller_chosen_request_ids_never_key_impressions(setup: dict[str, Any]) -> None:
    """Two readers sending the same X-Request-ID get their own impressions; each one's click
    counts; the echoed request id stays the caller's."""
    client = setup["client"]
    apply(setup, {"experiments": [{"name": "ids", "variants": {"control": 50, "other": 50}}]})
    readers = users(setup, 2)
    bodies = [
        client.post(
            f"/recommendations/users/{u}", json={"limit": 3}, headers={"X-Request-ID": "same-1"}
        ).json()
        for u in readers
    ]
    ids = [b["metadata"]["impression_id"] for b in bodies]
    assert [b["metadata"]["request_id"] for b in bodies] == ["same-1", "same-1"]
    assert len(set(ids)) == 2
    assert "same-1" not in ids
    for user, body, impression in zip(readers, bodies, ids, strict=True):
        click = {
            "impression_id": impression,
            "user_id": user,
            "book_id": body["recommendations"][0]["book_id"],
        }
        assert client.post("/feedback", json=click).status_code == 202
    setup["live"].impressions.flush()
    counts = setup["live"].stores.experiments.experiment_counts("ids")
    assert sum(n for n, _ in counts.values()) == sum(c for _, c in counts.values()) == 2
    # without X-Request-ID the generated request id is the impression id
    plain = client.post(f"/recommendations/users/{readers[0]}", json={"limit": 2}).json()
    assert plain["metadata"]["impression_id"] == plain["metadata"]["request_id"]


def test_traffic_change_and_promotion_under_load(setup: dict[str, Any]) -> None:
    """Edits apply live; requests in flight never fail; a bad edit is refused."""
    client = setup["client"]
    ids = users(setup, 30)
    base = {"name": "rollout", "settings": {"treatment": {"bundle": str(setup["other"])}}}
    write_and_wait(setup, {"experiments": [{**base, "variants": {"control": 90, "treatment": 10}}]})
    outcomes: collections.Counter[tuple[int | str, str]] = collections.Counter()
    fallbacks: collections.Counter[str] = collections.Counter()
    stop = threading.Event()

    def hammer() -> None:
        with httpx.Client(base_url=str(client.base_url), timeout=30) as own:
            i = 0
            while not stop.is_set():
                user = ids[i % len(ids)]
                i += 1
                try:  # a transport error is a failed request too
                    r = own.post(f"/recommendations/users/{user}", json={"limit": 5})
                except httpx.HTTPError as exc:
                    outcomes[(type(exc).__name__, "")] += 1
                    continue
                meta = r.json()["metadata"] if r.status_code == 200 else {}
                outcomes[(r.status_code, meta.get("bundle_version", ""))] += 1
                fallbacks[str(meta.get("fallback_reason"))] += 1

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.3)
        write_and_wait(
            setup, {"experiments": [{**base, "variants": {"control": 50, "treatment": 50}}]}
        )
        time.sleep(0.3)
        # promote while the old default still serves half the traffic: the other version
        # becomes the default, the experiment ends
        write_and_wait(setup, {"default_bundle": str(setup["other"]), "experiments": []})
        time.sleep(0.3)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert {status for status, _ in outcomes} == {200}, outcomes
    # no request on a retired service waited out its budget
    assert not {"timeout", "stage_error"} & set(fallbacks), fallbacks
    assert {v for _, v in outcomes} == {setup["bundle"].version, setup["other"].name}
    after = client.post(f"/recommendations/users/{ids[0]}", json={"limit": 5}).json()["metadata"]
    assert (after["bundle_version"], after["experiment"]) == (setup["other"].name, None)
    watcher = setup["app"].state.core.watcher
    write_and_wait(setup, {"experiments": [{"name": "bad", "variants": {"a": 10, "b": 10}}]})
    assert watcher.error is not None
    assert "sum to 100" in watcher.error
    still = client.post(f"/recommendations/users/{ids[0]}", json={"limit": 5}).json()["metadata"]
    assert (still["bundle_version"], still["experiment"]) == (setup["other"].name, None)
