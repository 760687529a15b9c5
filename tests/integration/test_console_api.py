"""The operator console's API over real HTTP: model versions with promote and rollback through
a real registry, the per-user preview and its verdicts, and the live health view; each needs
its scope."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.helpers.bundles import two_versions

from recsys.bundle.reader import load_bundle
from recsys.features.ranking import FEATURES
from recsys.lifecycle import Registry, open_registry
from recsys.serving.app import create_app
from recsys.serving.auth import Authenticator
from recsys.serving.live import Live
from recsys.serving.local import serve_in_thread
from recsys.serving.service import RecommendationService

pytestmark = pytest.mark.integration
SECRET = "console-tests-only-secret-0123456789abcdef"
OPERATOR = ["ops:read", "models:write", "users:read:any", "recs:read:any", "catalogue:write"]


def bearer(sub: str, scopes: list[str] | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {Authenticator(secret=SECRET).issue(sub, scopes)}"}


@pytest.fixture(scope="module")
def family(trained_bundle: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Any:
    return two_versions(Path(trained_bundle["bundle"]), tmp_path_factory.mktemp("console"))


@pytest.fixture(scope="module")
def registry(family: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    registry = open_registry(f"sqlite:///{tmp_path_factory.mktemp('reg') / 'registry.db'}")
    registry.register(family["old"], stage="production")
    registry.register(family["new"])
    yield registry
    registry.close()


@pytest.fixture(scope="module")
def server(
    family: dict[str, Any], registry: Registry, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[httpx.Client, Any]]:
    store = tmp_path_factory.mktemp("store") / "store.db"
    live = Live.from_config(
        {
            "store": {"url": f"sqlite:///{store}"},
            "auth": {"enabled": True, "secret": SECRET},
            "registry": {"url": registry.url, "poll_s": 0.2},
        }
    )
    app = create_app(lambda: RecommendationService(load_bundle(family["old"]), 10.0, live=live))
    with serve_in_thread(app) as base, httpx.Client(base_url=base, timeout=30) as client:
        yield client, app


def test_model_versions_promote_and_roll_back(
    server: tuple[httpx.Client, Any], family: dict[str, Any], registry: Registry
) -> None:
    client, _ = server
    old, new = family["old"].name, family["new"].name
    assert client.get("/models", headers=bearer("u1")).status_code == 403
    listing = client.get("/models", headers=bearer("ops", OPERATOR)).json()
    assert listing["production"] == old
    assert listing["bundle_version"] == old
    assert {v["version"]: v["stage"] for v in listing["versions"]} == {
        old: "production",
        new: "candidate",
    }
    assert all("recall@20" in v["metrics"] for v in listing["versions"])

    # a reader, and an operator who may only look, cannot promote
    for who in (bearer("u1"), bearer("viewer", ["ops:read"])):
        refused = client.post("/models/promote", json={"version": new}, headers=who)
        assert refused.status_code == 403
        assert "models:write" in refused.json()["detail"]
    body = {"version": new, "reason": "console test"}
    promoted = client.post("/models/promote", json=body, headers=bearer("ops", OPERATOR))
    assert promoted.status_code == 200, promoted.text
    assert promoted.json()["bundle_version"] == new  # this server switched at once
    assert registry.production(family["name"]).version == new  # type: ignore[union-attr]
    assert registry.history(family["name"])[-1]["actor"] == "ops"
    assert client.get("/readyz").json()["bundle_version"] == new

    back = client.post("/models/rollback", json={}, headers=bearer("ops", OPERATOR))
    assert back.status_code == 200, back.text
    assert back.json()["bundle_version"] == old
    unknown = client.post(
        "/models/promote", json={"version": "no-such-version"}, headers=bearer("ops", OPERATOR)
    )
    assert unknown.status_code == 400
    assert "no-such-version" in unknown.json()["detail"]


def known_reader(family: dict[str, Any], row: int) -> tuple[str, list[str]]:
    histories = load_bundle(family["old"]).known_histories
    user = histories.row(row)
    return str(user[0]), [str(b) for b in user[1]]


def preview(client: httpx.Client, user: str, **body: Any) -> dict[str, Any]:
    answer = client.post(f"/users/{user}/preview", json=body, headers=bearer("ops", OPERATOR))
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


def test_preview_shows_the_served_list_its_candidates_and_why(
    server: tuple[httpx.Client, Any], family: dict[str, Any]
) -> None:
    client, _ = server
    user, history = known_reader(family, 2)
    assert client.post(f"/users/{user}/preview", headers=bearer(user)).status_code == 403
    seen = client.post(f"/recommendations/users/{user}", json={"limit": 10}, headers=bearer(user))
    served = [b["book_id"] for b in seen.json()["recommendations"]]

    view = preview(client, user, limit=10)
    assert view["status"] == "personal"
    assert [b["book_id"] for b in view["served"]] == served  # what the reader is served
    assert all(b["reasoning"] for b in view["served"])
    candidates = view["candidates"]
    assert len(candidates) > 10
    books = load_bundle(family["old"]).books
    in_series = set(books.filter(books["series"].is_not_null())["book_id"].to_list())
    work = dict(zip(books["book_id"], books["work_id"], strict=True))
    listed = [c["book_id"] for c in candidates if c["listed"]]
    assert set(listed) <= set(served)
    # outside series the list is the candidates in score order; a series volume may stand in
    # for a later one (reading order), in its place
    assert [b for b in served if b not in in_series] == [b for b in listed if b not in in_series]
    assert all(b in in_series for b in set(served) - set(listed))
    assert [c["position"] for c in candidates[:10]] == list(range(1, 11))
    scores = [c["score"] for c in candidates]
    assert scores == sorted(scores, reverse=True)
    assert all(set(c["features"]) == set(FEATURES) for c in candidates)
    assert all(c["sources"] and all(r >= 1 for r in c["sources"].values()) for c in candidates)
    assert not {c["book_id"] for c in candidates} & set(history)  # read books never proposed

    def verdict(book: str, **body: Any) -> dict[str, Any]:
        why: dict[str, Any] = preview(client, user, limit=10, book_id=book, **body)["why"]
        assert why["book_id"] == book
        return why

    assert verdict(served[3])["verdict"] == "listed"
    assert "place 4 of 10" in verdict(served[3])["detail"]
    assert verdict(history[0])["verdict"] == "already_read"
    served_works = {work[b] for b in served}
    plain = next(
        c
        for c in candidates[10:]
        if c["book_id"] not in in_series and work[c["book_id"]] not in served_works
    )
    below = verdict(plain["book_id"])
    assert below["verdict"] == "below_the_cut"
    assert f"ranked {plain['position']} of" in below["detail"]
    proposed = {c["book_id"] for c in candidates} | set(history)
    catalogue = load_bundle(family["old"]).state.books.ids.to_list()
    outside = next(b for b in catalogue if b not in proposed)
    missing = verdict(outside)
    assert missing["verdict"] == "not_a_candidate"
    assert "the two-tower ranks it" in missing["detail"]
    assert verdict("no-such-book")["verdict"] == "not_in_catalogue"
    year = load_bundle(family["old"]).books.filter(book_id=candidates[0]["book_id"])["year"][0]
    filtered = verdict(candidates[0]["book_id"], filters={"year_max": int(year) - 1})
    assert filtered["verdict"] == "filtered"


def test_preview_of_removed_books_erased_and_unknown_readers(
    server: tuple[httpx.Client, Any], family: dict[str, Any]
) -> None:
    client, _ = server
    user, _ = known_reader(family, 3)
    top = preview(client, user, limit=5)["served"][0]["book_id"]
    assert client.delete(f"/books/{top}", headers=bearer("ops", OPERATOR)).status_code == 204
    assert preview(client, user, limit=5, book_id=top)["why"]["verdict"] == "removed"

    stranger = preview(client, "nobody-at-all", limit=5, book_id=top)
    assert stranger["status"] == "unknown_user"
    assert stranger["source"] == "popularity"
    assert len(stranger["served"]) == 5
    assert stranger["candidates"] == []

    gone, _ = known_reader(family, 4)
    assert client.delete(f"/users/{gone}", headers=bearer(gone)).status_code == 200
    erased = preview(client, gone, limit=5, book_id=top)
    assert erased["status"] == "erased"
    assert erased["served"] == []
    assert erased["history"] == []
    assert erased["why"]["verdict"] == "erased"


def test_vitals_report_this_process_traffic(
    server: tuple[httpx.Client, Any], family: dict[str, Any]
) -> None:
    client, app = server
    vitals = app.state.core.vitals
    vitals.stop()  # sampled by hand from here: one interval around the traffic below
    vitals.take()
    user, _ = known_reader(family, 5)
    for _ in range(10):
        client.post(f"/recommendations/users/{user}", headers=bearer(user))
    client.post("/recommendations/users/nobody-else", headers=bearer("nobody-else"))
    event = {"user_id": user, "book_id": known_reader(family, 6)[1][0], "type": "view"}
    assert client.post("/events", json=event, headers=bearer(user)).status_code == 202
    vitals.take()
    assert client.get("/ops/vitals", headers=bearer(user)).status_code == 403
    view = client.get("/ops/vitals", headers=bearer("ops", OPERATOR)).json()
    last = view["points"][-1]
    assert last["rps"] > 0
    assert 0 < last["p50_ms"] <= last["p99_ms"]
    assert last["error_rate"] == 0
    assert last["fallback_rate"] == pytest.approx(1 / 11)  # the unknown reader
    assert last["events_per_s"] > 0
    assert last["cache_hit_ratio"] == pytest.approx(9 / 11)  # the reader's 9 repeats
