"""The FastAPI app under a real uvicorn server on loopback, called over real HTTP."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from recsys.bundle.reader import load_bundle
from recsys.serving.app import create_app
from recsys.serving.faults import FaultyStages
from recsys.serving.local import serve_in_thread
from recsys.serving.service import RecommendationService

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(trained_bundle: dict[str, Any]) -> Iterator[tuple[httpx.Client, Any]]:
    bundle = load_bundle(trained_bundle["bundle"])
    app = create_app(lambda: RecommendationService(bundle, stage_timeout_s=5.0))
    with serve_in_thread(app) as base, httpx.Client(base_url=base, timeout=30) as client:
        yield client, app


def known_user(trained_bundle: dict[str, Any]) -> tuple[str, list[str]]:
    bundle = load_bundle(trained_bundle["bundle"])
    user_id, history = bundle.histories.row(0)
    return str(user_id), list(history)


def test_user_recommendations(
    server: tuple[httpx.Client, Any], trained_bundle: dict[str, Any]
) -> None:
    client, _ = server
    user_id, history = known_user(trained_bundle)
    response = client.post(
        f"/recommendations/users/{user_id}", json={"limit": 7}, headers={"X-Request-ID": "abc-123"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert response.headers["X-Request-ID"] == "abc-123"
    assert body["metadata"]["request_id"] == "abc-123"
    assert body["metadata"]["source"] == "personalized"
    assert body["metadata"]["bundle_version"] == load_bundle(trained_bundle["bundle"]).version
    items = body["recommendations"]
    assert len(items) == 7
    assert len({i["book_id"] for i in items}) == 7
    assert not {i["book_id"] for i in items} & set(history)
    assert all(i["title"] and i["author"] and i["reasoning"] for i in items)
    scores = [i["confidence_score"] for i in items]
    assert scores == sorted(scores, reverse=True)
    assert body["metadata"]["from_model"] == 7  # no filter: every book from the model
    generated = client.post(f"/recommendations/users/{user_id}").headers["X-Request-ID"]
    assert len(generated) == 32


def test_filters_and_exclude(
    server: tuple[httpx.Client, Any], trained_bundle: dict[str, Any]
) -> None:
    client, _ = server
    user_id, _ = known_user(trained_bundle)
    first = client.post(f"/recommendations/users/{user_id}", json={"limit": 3}).json()
    banned = [i["book_id"] for i in first["recommendations"]]
    again = client.post(
        f"/recommendations/users/{user_id}",
        json={"limit": 10, "exclude": banned, "filters": {"year_min": 1960, "year_max": 1990}},
    ).json()
    ids = [i["book_id"] for i in again["recommendations"]]
    assert len(ids) == 10
    assert not set(ids) & set(banned)
    books = load_bundle(trained_bundle["bundle"]).books
    years = dict(books.select("book_id", "year").iter_rows())
    assert all(1960 <= years[b] <= 1990 for b in ids)


def test_unknown_user_falls_back(server: tuple[httpx.Client, Any]) -> None:
    client, _ = server
    body = client.post("/recommendations/users/nobody-knows-me", json={"limit": 5}).json()
    assert body["metadata"]["source"] == "popularity"
    assert body["metadata"]["fallback_reason"] == "unknown_user"
    assert body["metadata"]["from_model"] is None  # not a personal list
    assert len(body["recommendations"]) == 5


def test_stage_failure_and_timeout_fall_back(
    server: tuple[httpx.Client, Any], trained_bundle: dict[str, Any]
) -> None:
    client, app = server
    user_id, history = known_user(trained_bundle)
    service: RecommendationService = app.state.core.service
    assert service.stages is not None
    real, drill = service.stages, FaultyStages(service.stages)
    service.stages = drill
    budget = service.stage_timeout_s
    try:
        drill.inject(fail_next=1)
        body = client.post(f"/recommendations/users/{user_id}", json={"limit": 5}).json()
        assert body["metadata"]["source"] == "popularity"
        assert body["metadata"]["fallback_reason"] == "stage_error"
        assert not {i["book_id"] for i in body["recommendations"]} & set(history)
        service.stage_timeout_s = 0.05
        drill.inject(slow_next_s=1.0)  # the stage overruns its 50 ms budget
        body = client.post(f"/recommendations/users/{user_id}", json={"limit": 5}).json()
        assert body["metadata"]["fallback_reason"] == "timeout"
        time.sleep(1.0)  # the slow call drains
    finally:
        service.stage_timeout_s = budget
        service.stages = real
    body = client.post(f"/recommendations/users/{user_id}", json={"limit": 5}).json()
    assert body["metadata"]["source"] == "personalized"  # the drill is over
    metrics = client.get("/metrics").text
    assert 'recsys_fallbacks_total{reason="stage_error"}' in metrics
    assert 'recsys_fallbacks_total{reason="timeout"}' in metrics


def test_similar_books(server: tuple[httpx.Client, Any], trained_bundle: dict[str, Any]) -> None:
    client, _ = server
    response = client.post("/recommendations/books/b5", json={"limit": 5})
    assert response.status_code == 200
    ids = [i["book_id"] for i in response.json()["recommendations"]]
    assert len(ids) == 5
    assert "b5" not in ids
    user_id, _ = known_user(trained_bundle)
    v2 = client.post(
        "/v2/recommendations/similar-books",
        json={"book_id": "b5", "limit": 4, "user_context": {"user_id": user_id}},
    )
    assert v2.status_code == 200
    assert len(v2.json()["recommendations"]) == 4
    assert client.post("/recommendations/books/no-such-book").status_code == 404
    assert "unknown book" in client.post("/recommendations/books/nope").json()["detail"]


def test_hybrid_and_trending(server: tuple[httpx.Client, Any]) -> None:
    client, _ = server
    body = client.post(
        "/recommendations/hybrid",
        json={"history": ["b1", "b2", "b3"], "seed_books": ["b4"], "limit": 6},
    ).json()
    assert body["metadata"]["source"] == "hybrid"
    assert not {i["book_id"] for i in body["recommendations"]} & {"b1", "b2", "b3", "b4"}
    empty = client.post("/recommendations/hybrid", json={"history": ["unknown-1"]}).json()
    assert empty["metadata"]["source"] == "popularity"
    assert client.post("/recommendations/hybrid", json={"seed_books": ["zzz"]}).status_code == 404
    trending = client.get("/recommendations/trending", params={"limit": 3}).json()
    assert trending["metadata"]["source"] == "trending"
    assert len(trending["recommendations"]) == 3


@pytest.mark.parametrize(
    ("method", "path", "kwargs"),
    [
        ("post", "/recommendations/users/u1", {"json": {"limit": 0}}),
        ("post", "/recommendations/users/u1", {"json": {"limit": 51}}),
        ("post", "/recommendations/users/u1", {"json": {"limit": "ten"}}),
        ("post", "/recommendations/users/u1", {"json": {"unknown_field": 1}}),
        (
            "post",
            "/recommendations/users/u1",
            {"json": {"filters": {"year_min": 2000, "year_max": 1990}}},
        ),
        (
            "post",
            "/recommendations/users/u1",
            {"content": b"{not json", "headers": {"content-type": "application/json"}},
        ),
        ("post", "/recommendations/hybrid", {"json": {"history": ["b1"] * 500}}),
        ("get", "/recommendations/trending", {"params": {"limit": 1000}}),
    ],
)
def test_bad_input_is_422(
    server: tuple[httpx.Client, Any], method: str, path: str, kwargs: dict[str, Any]
) -> None:
    client, _ = server
    response = getattr(client, method)(path, **kwargs)
    assert response.status_code == 422, response.text
    assert response.json()["detail"]


def test_health_docs_metrics(server: tuple[httpx.Client, Any]) -> None:
    client, _ = server
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["status"] == "ready"
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    assert "/recommendations/users/{user_id}" in spec["paths"]
    metrics = client.get("/metrics").text
    assert "recsys_requests_total" in metrics
    assert "recsys_request_latency_seconds_bucket" in metrics
    # this server runs without auth: there is no caller to name
    assert client.get("/auth/me").json() == {"auth_enabled": False, "subject": None, "scopes": []}


def test_concurrent_requests_share_model_calls_and_the_batch_size_is_exported(
    server: tuple[httpx.Client, Any], trained_bundle: dict[str, Any]
) -> None:
    """Eight callers in a closed loop over HTTP: every personalised answer is counted in
    ``recsys_stage_batch_size``, and answers share model calls (the mean batch is over one)."""
    from concurrent.futures import ThreadPoolExecutor

    client, _ = server
    bundle = load_bundle(trained_bundle["bundle"])
    users = [str(u) for u in bundle.histories.get_column("user_id")[:32].to_list()]

    def batch_sizes() -> tuple[float, float]:
        lines = client.get("/metrics").text.splitlines()
        found = {}
        for name in ("recsys_stage_batch_size_count", "recsys_stage_batch_size_sum"):
            found[name] = next(float(x.split()[-1]) for x in lines if x.startswith(name + " "))
        return found["recsys_stage_batch_size_count"], found["recsys_stage_batch_size_sum"]

    def caller(first: int) -> list[str]:
        with httpx.Client(base_url=str(client.base_url), timeout=30) as own:
            answers = [
                own.post(f"/recommendations/users/{users[i]}", json={"limit": 5})
                for i in range(first, 32, 8)
            ]
        return [a.json()["metadata"]["source"] for a in answers]

    count, total = batch_sizes()
    with ThreadPoolExecutor(8) as pool:
        sources = [s for answers in pool.map(caller, range(8)) for s in answers]
    assert sources == ["personalized"] * 32
    count_after, total_after = batch_sizes()
    assert count_after - count == 32  # each answer counted once
    assert total_after - total > count_after - count  # some answered together


def test_web_app_is_served_and_counted(server: tuple[httpx.Client, Any]) -> None:
    client, _ = server
    home = client.get("/", follow_redirects=False)
    assert home.status_code == 307
    assert home.headers["location"] == "/app/"
    page = client.get("/app/")
    assert page.status_code == 200
    assert '<script type="module" src="app.js">' in page.text
    for asset, kind in (("app.js", "javascript"), ("style.css", "text/css")):
        answer = client.get(f"/app/{asset}")
        assert answer.status_code == 200
        assert kind in answer.headers["content-type"]
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["referrer-policy"] == "no-referrer"
    assert client.get("/app/missing.js").status_code == 404
    metrics = client.get("/metrics").text
    assert 'endpoint="/app",source="-",status="200"' in metrics


def test_endpoints_that_need_the_store_say_so(server: tuple[httpx.Client, Any]) -> None:
    """A server run without a store (the null store) answers recommendations and gives a
    clear 503 wherever the store is needed."""
    client, _ = server
    needs_store = [
        client.post("/events", json={"user_id": "u1", "book_id": "x", "type": "read"}),
        client.post("/feedback", json={"request_id": "r", "user_id": "u1", "book_id": "x"}),
        client.get("/users/u1"),
        client.get("/users/u1/history"),
        client.delete("/users/u1"),
        client.get("/books", params={"q": "dune"}),
        client.get("/books/b1"),
        client.post("/books", json={"book_id": "new", "title": "New"}),
        client.put("/books/b1", json={"title": "Changed"}),
        client.delete("/books/b1"),
    ]
    for response in needs_store:
        assert response.status_code == 503, (response.request.url, response.text)
        assert "store.url=null" in response.json()["detail"]
    assert client.get("/recommendations/trending").status_code == 200


class BrokenTrending(RecommendationService):
    """A service with a bug: trending raises an error nothing expects."""

    def trending(self, limit: int) -> Any:
        raise RuntimeError("planted bug")


def test_an_unexpected_error_is_a_counted_and_logged_500(
    trained_bundle: dict[str, Any], capfd: pytest.CaptureFixture[str]
) -> None:
    """A bug in one endpoint is a 500 that carries the request id, is counted in
    ``recsys_errors_total`` and logged with its traceback, while the other endpoints answer."""
    bundle = load_bundle(trained_bundle["bundle"])
    app = create_app(lambda: BrokenTrending(bundle, stage_timeout_s=5.0))
    with serve_in_thread(app) as base, httpx.Client(base_url=base, timeout=30) as client:
        broken = client.get("/recommendations/trending", headers={"X-Request-ID": "bug-1"})
        assert broken.status_code == 500
        assert broken.json() == {"detail": "internal error", "request_id": "bug-1"}
        assert broken.headers["X-Request-ID"] == "bug-1"
        assert client.post("/recommendations/books/b5", json={"limit": 3}).status_code == 200
        metrics = client.get("/metrics").text
    assert 'recsys_errors_total{endpoint="/recommendations/trending",status="500"} 1.0' in metrics
    logged = capfd.readouterr()
    log = logged.out + logged.err
    for logged_part in ("unhandled error", "planted bug", "bug-1"):
        assert logged_part in log
