"""Events, trending, catalogue and users, the two-level cache on a real Redis, and erasure,
over real HTTP against the app with a SQLite store (and a real server process for the
durability test)."""

from __future__ import annotations

import collections
import json
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import polars as pl
import pytest

from recsys.bundle.reader import load_bundle
from recsys.offline.batch import make_plan
from recsys.offline.export import export_embeddings
from recsys.serving.app import create_app
from recsys.serving.auth import Authenticator
from recsys.serving.live import Live
from recsys.serving.local import serve_in_thread, spawn_server
from recsys.serving.service import RecommendationService
from recsys.stores import open_store

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("store") / "recsys.db"


def make_live(db: Path, redis_url: str | None) -> Live:
    return Live.from_config(
        {
            "store": {"url": f"sqlite:///{db}"},
            "auth": {"enabled": False},  # auth has its own tests (test_security.py)
            "trending": {"half_life_hours": 6, "window_days": 7, "refresh_s": 3600},
            "cache": {"enabled": True, "ttl_s": 3600, "l1_ttl_s": 30, "redis_url": redis_url},
        }
    )


@pytest.fixture(scope="module")
def server(
    trained_bundle: dict[str, Any], redis_url: str, db: Path
) -> Iterator[tuple[httpx.Client, Live]]:
    bundle = load_bundle(trained_bundle["bundle"])
    live = make_live(db, redis_url)
    app = create_app(lambda: RecommendationService(bundle, 10.0, live=live))
    with serve_in_thread(app) as base, httpx.Client(base_url=base, timeout=30) as client:
        yield client, live


def genres(trained_bundle: dict[str, Any]) -> dict[str, str]:
    books = load_bundle(trained_bundle["bundle"]).books
    return dict(zip(books["book_id"], [t[0] for t in books["tags"]], strict=True))


def short_history_user(trained_bundle: dict[str, Any], skip: int = 0) -> tuple[str, list[str]]:
    frame = load_bundle(trained_bundle["bundle"]).known_histories
    frame = frame.with_columns(n=pl.col("history").list.len()).sort("n", "user_id")
    user_id, history, _ = frame.row(skip)
    return str(user_id), list(history)


def recommend(client: httpx.Client, user_id: str, limit: int = 20) -> dict[str, Any]:
    response = client.post(f"/recommendations/users/{user_id}", json={"limit": limit})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_events_move_recommendations_at_once_and_invalidate_the_cache(
    server: tuple[httpx.Client, Live], trained_bundle: dict[str, Any]
) -> None:
    client, _ = server
    genre = genres(trained_bundle)
    user_id, history = short_history_user(trained_bundle)
    before = recommend(client, user_id)
    assert before["metadata"]["cache"] is None
    assert recommend(client, user_id)["metadata"]["cache"] == "l1"  # same request: cached
    shown = collections.Counter(genre[i["book_id"]] for i in before["recommendations"])
    read = collections.Counter(genre[b] for b in history)
    target = min(sorted(set(genre.values())), key=lambda g: shown[g] + read[g])
    popularity = load_bundle(trained_bundle["bundle"]).popularity
    ids = load_bundle(trained_bundle["bundle"]).state.books.ids.to_list()
    burst = [ids[i - 2] for i in popularity.order if genre[ids[i - 2]] == target][:10]
    events = [{"user_id": user_id, "book_id": b, "type": "read"} for b in burst]
    response = client.post("/events", json={"events": events})
    assert response.status_code == 202, response.text
    assert response.json() == {"stored": 10, "duplicates": 0}
    after = recommend(client, user_id)
    assert after["metadata"]["cache"] is None  # the event invalidated the user's entries
    assert after["metadata"]["source"] == "personalized"
    moved = sum(genre[i["book_id"]] == target for i in after["recommendations"])
    assert shown[target] <= 2
    assert moved >= 8, (target, moved)
    assert not {i["book_id"] for i in after["recommendations"]} & set(burst)  # read: excluded
    metrics = client.get("/metrics").text
    assert "recsys_cache_hit_ratio" in metrics
    assert 'recsys_cache_lookups_total{result="l1"}' in metrics


def test_event_validation_and_idempotency(
    server: tuple[httpx.Client, Live], trained_bundle: dict[str, Any], db: Path
) -> None:
    client, _ = server
    count = lambda: sqlite3.connect(db).execute("select count(*) from events").fetchone()[0]  # noqa: E731
    before = count()
    bad = [
        {"user_id": "u1", "book_id": "b1", "type": "like"},
        {"user_id": "u1", "book_id": "b1", "type": "rate"},
        {"user_id": "u1", "book_id": "b1", "type": "rate", "value": 11},
        {"user_id": "u1", "book_id": "no-such-book", "type": "read"},
        {"user_id": "", "book_id": "b1", "type": "read"},
        {"user_id": "u1", "book_id": "b1", "type": "read", "timestamp": time.time() + 86400},
        {"user_id": "u1", "book_id": "b1", "type": "read", "extra": 1},
        {"events": []},
        {"events": [{"user_id": "u1", "book_id": "b1", "type": "read"}] * 1001},
    ]
    for body in bad:
        response = client.post("/events", json=body)
        assert response.status_code == 422, (body, response.text)
        assert response.json()["detail"]
    malformed = client.post(
        "/events", content=b"{oops", headers={"content-type": "application/json"}
    )
    assert malformed.status_code == 422
    assert count() == before  # nothing malformed was stored
    event = {"user_id": "u7", "book_id": "b3", "type": "view", "event_id": "evt-42"}
    assert client.post("/events", json=event).json() == {"stored": 1, "duplicates": 0}
    assert client.post("/events", json=event).json() == {"stored": 0, "duplicates": 1}
    assert count() == before + 1


def test_trending_follows_recent_events(server: tuple[httpx.Client, Live]) -> None:
    client, _ = server
    cold = client.get("/recommendations/trending", params={"limit": 5}).json()
    assert cold["metadata"]["source"] == "trending"
    rising = "b777"
    assert rising not in {i["book_id"] for i in cold["recommendations"]}
    events = [{"user_id": f"fan{i}", "book_id": rising, "type": "purchase"} for i in range(30)]
    assert client.post("/events", json={"events": events}).status_code == 202
    hot = client.get("/recommendations/trending", params={"limit": 5}).json()
    assert hot["recommendations"][0]["book_id"] == rising
    assert hot["recommendations"][0]["reasoning"] == "trending now"
    assert len(hot["recommendations"]) == 5


def test_trending_decays_with_time() -> None:
    from recsys.serving.trending import Trending

    trending = Trending(half_life_s=3600, window_s=86400)
    now = time.time()
    trending.add("old", "read", now - 3 * 3600, now)  # three half-lives ago
    trending.add("new", "read", now, now)
    scores = dict(trending.top(5, now))
    assert scores["new"] == pytest.approx(1.0)
    assert scores["old"] == pytest.approx(0.125)
    trending.add("ancient", "read", now - 2 * 86400, now)  # outside the window
    assert "ancient" not in dict(trending.top(5, now))


def test_catalogue_crud_and_search(
    server: tuple[httpx.Client, Live], trained_bundle: dict[str, Any]
) -> None:
    client, _ = server
    new = {
        "book_id": "nb-1",
        "title": "The Quiet Lighthouse",
        "authors": "Mara Quell",
        "year": 2021,
    }
    created = client.post("/books", json=new)
    assert created.status_code == 201, created.text
    assert client.post("/books", json=new).status_code == 409
    assert client.get("/books/nb-1").json()["title"] == "The Quiet Lighthouse"
    found = client.get("/books", params={"q": "lighth quell"}).json()["books"]
    assert [b["book_id"] for b in found] == ["nb-1"]
    updated = client.put("/books/nb-1", json={"title": "The Loud Lighthouse"})
    assert updated.status_code == 200
    assert updated.json()["authors"] == "Mara Quell"  # untouched fields stay
    assert client.get("/books", params={"q": "quiet"}).json()["books"] == []
    assert client.put("/books/missing", json={"title": "x"}).status_code == 404
    assert client.post("/books", json={"book_id": "bad id", "title": "x"}).status_code == 422
    # Events about a new catalogue book are accepted.
    ok = client.post("/events", json={"user_id": "u5", "book_id": "nb-1", "type": "view"})
    assert ok.status_code == 202
    # Removing a model book: never recommended, not similar-able, not searchable.
    user_id, _ = short_history_user(trained_bundle, skip=3)
    top = recommend(client, user_id, 5)["recommendations"][0]["book_id"]
    assert client.delete(f"/books/{top}").status_code == 204
    assert client.delete(f"/books/{top}").status_code == 404
    assert client.get(f"/books/{top}").status_code == 404
    assert client.post(f"/recommendations/books/{top}").status_code == 404
    client.post("/events", json={"user_id": user_id, "book_id": "nb-1", "type": "view"})
    assert top not in {i["book_id"] for i in recommend(client, user_id, 50)["recommendations"]}
    trending = client.get("/recommendations/trending", params={"limit": 50}).json()
    assert top not in {i["book_id"] for i in trending["recommendations"]}
    rejected = client.post("/events", json={"user_id": user_id, "book_id": top, "type": "read"})
    assert rejected.status_code == 422


def test_user_profile_and_history(
    server: tuple[httpx.Client, Live], trained_bundle: dict[str, Any]
) -> None:
    client, _ = server
    user_id, history = short_history_user(trained_bundle, skip=5)
    ts = time.time() - 60
    client.post(
        "/events",
        json={"user_id": user_id, "book_id": "b9", "type": "rate", "value": 8, "timestamp": ts},
    )
    profile = client.get(f"/users/{user_id}").json()
    assert profile["in_model"] is True
    assert profile["events"] == 1
    items = client.get(f"/users/{user_id}/history").json()["history"]
    assert [i["book_id"] for i in items if i["source"] == "bundle"] == history
    assert items[-1] == {
        "book_id": "b9",
        "title": items[-1]["title"],
        "source": "event",
        "type": "rate",
        "timestamp": pytest.approx(ts),
    }
    assert client.get("/users/never-seen").status_code == 404


def test_level_two_cache_is_shared_and_a_new_bundle_misses(
    trained_bundle: dict[str, Any], redis_url: str, db: Path
) -> None:
    """Two 'replicas' (apps) share the store and Redis: one computes, the other reads L2."""
    bundle = load_bundle(trained_bundle["bundle"])
    user_id, _ = short_history_user(trained_bundle, skip=7)
    apps = [
        create_app(lambda: RecommendationService(bundle, 10.0, live=make_live(db, redis_url)))
        for _ in range(2)
    ]
    with (
        serve_in_thread(apps[0]) as a,
        serve_in_thread(apps[1]) as b,
        httpx.Client(base_url=a, timeout=30) as first,
        httpx.Client(base_url=b, timeout=30) as second,
    ):
        one = recommend(first, user_id, 9)
        two = recommend(second, user_id, 9)
        assert (one["metadata"]["cache"], two["metadata"]["cache"]) == (None, "l2")
        assert one["recommendations"] == two["recommendations"]
    import redis

    client = redis.Redis.from_url(redis_url)
    keys = [k.decode() for k in client.keys(f"recsys:*:user:{user_id}")]
    assert keys == [f"recsys:{bundle.version}:user:{user_id}"]
    from recsys.serving.cache import ResponseCache

    cache = ResponseCache(redis_url=redis_url)
    assert cache.get(
        bundle.version,
        user_id,
        {
            "limit": 9,
            "exclude": [],
            "filters": None,
            "experiment": None,
            "variant": None,
            "rules": "none",
        },
    )[1] == ("l2")
    assert cache.get("another-version", user_id, {"limit": 9})[1] == "miss"


def test_erasure_leaves_nothing_behind(
    server: tuple[httpx.Client, Live],
    trained_bundle: dict[str, Any],
    redis_url: str,
    db: Path,
    tmp_path: Path,
) -> None:
    client, live = server
    user_id, _ = short_history_user(trained_bundle, skip=9)
    client.post("/events", json={"user_id": user_id, "book_id": "b11", "type": "read"})
    assert recommend(client, user_id)["metadata"]["source"] == "personalized"
    recommend(client, user_id)  # cached in both levels
    response = client.delete(f"/users/{user_id}", headers={"X-Actor": "dpo@example.org"})
    assert response.status_code == 200
    removed = response.json()["removed"]
    assert removed["events"] == 1
    assert removed["profile"] == 1

    # Store: no row anywhere mentions the id.
    with sqlite3.connect(db) as conn:
        tables = [r[0] for r in conn.execute("select name from sqlite_master where type='table'")]
        for table in tables:
            for row in conn.execute(f"select * from {table}"):
                assert user_id not in json.dumps(row, default=str), (table, row)
    # Caches: nothing in Redis, nothing in level 1.
    import redis

    server_keys = redis.Redis.from_url(redis_url).keys("*")
    assert not [k for k in server_keys if user_id.encode() in k]
    assert live.cache is not None
    assert not [g for g in live.cache.l1_users() if g.endswith(f":user:{user_id}")]
    # Serving: unknown from now on (the bundle's history of the user is suppressed).
    assert client.get(f"/users/{user_id}").status_code == 404
    after = recommend(client, user_id)
    assert after["metadata"]["fallback_reason"] == "unknown_user"
    # Audit: who, when, what — and the subject only as a hash.
    store = open_store(f"sqlite:///{db}")
    entry = store.users.audit()[-1]
    assert entry["actor"] == "dpo@example.org"
    assert entry["action"] == "delete_user"
    assert (entry["events"], entry["profile"]) == (1, 1)
    assert entry["subject_hash"] == store.users.user_hash(user_id) != user_id
    # Later batch outputs and exports leave the user out.
    plan = make_plan(trained_bundle["bundle"], "all", 10, 100, f"sqlite:///{db}")
    assert user_id not in plan.users
    assert user_id not in plan.unknown
    assert plan.deleted == 1
    out = tmp_path / "export"
    export_embeddings(load_bundle(trained_bundle["bundle"]), out, stores=store)
    assert user_id not in pl.read_parquet(out / "users.parquet").get_column("user_id").to_list()
    exported = pl.read_parquet(out / "users.parquet").get_column("user_id").to_list()
    assert "fan0" in exported  # a user known only from events is exported


def test_acknowledged_events_survive_a_killed_server(
    trained_bundle: dict[str, Any], tmp_path: Path
) -> None:
    overrides = [f"bundle={trained_bundle['bundle']}", f"store.url=sqlite:///{tmp_path}/d.db"]
    # auth on, as `recsys serve` runs by default: the user's own token
    key = "durability-test-key-0123456789abcdef"
    env = {"RECSYS_ROOT": str(tmp_path), "RECSYS_JWT_SECRET": key}
    token = Authenticator(secret=key).issue("durable")
    auth = {"Authorization": f"Bearer {token}"}
    process, base = spawn_server(overrides, env, timeout_s=60)
    events = [{"user_id": "durable", "book_id": f"b{i}", "type": "read"} for i in range(20)]
    try:
        for event in events:  # one request each: every 202 must be durable by itself
            assert httpx.post(f"{base}/events", json=event, headers=auth).status_code == 202
    finally:
        process.send_signal(signal.SIGKILL)  # no shutdown hooks, no flush
        process.wait()
    process, base = spawn_server(overrides, env, timeout_s=60)
    try:
        assert httpx.get(f"{base}/users/durable/history").status_code == 401
        history = httpx.get(f"{base}/users/durable/history", headers=auth).json()["history"]
        assert [i["book_id"] for i in history] == [e["book_id"] for e in events]
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_new_book_is_retrievable_without_retraining(
    trained_bundle: dict[str, Any], tmp_path: Path
) -> None:
    """A book added through the API gets a book-tower vector from its side features: it is
    found by similar-books and by the retrieval stage of readers of its genre, and it
    survives a restart (re-embedded from the store)."""
    bundle = load_bundle(trained_bundle["bundle"])
    books = bundle.books
    genre = genres(trained_bundle)
    # a new volume of an existing series: same author, publisher, tags, year range
    twin = books.filter(pl.col("book_id") == "b5").row(0, named=True)
    new = {
        "book_id": "fresh-1",
        "title": "A New Volume",
        "authors": twin["authors"],
        "publisher": twin["publisher"],
        "year": twin["year"],
        "language": twin["language"],
        "tags": list(twin["tags"]),
    }
    live = Live.from_config(
        {"store": {"url": f"sqlite:///{tmp_path / 'new.db'}"}, "auth": {"enabled": False}}
    )
    app = create_app(lambda: RecommendationService(bundle, 10.0, live=live))
    with serve_in_thread(app) as base, httpx.Client(base_url=base, timeout=30) as client:
        assert client.post("/books", json=new).status_code == 201
        # among the closest 30 of ~2000 books to its series' first volume
        similar = client.post("/recommendations/books/b5", json={"limit": 30}).json()
        assert "fresh-1" in [i["book_id"] for i in similar["recommendations"]]
        own = client.post("/recommendations/books/fresh-1", json={"limit": 10}).json()
        neighbours = [genre.get(i["book_id"]) for i in own["recommendations"]]
        assert neighbours.count(twin["tags"][0]) >= 8
        service: RecommendationService = app.state.core.service
        readers = [
            u
            for u, h in bundle.known_histories.iter_rows()
            if sum(genre[b] == twin["tags"][0] for b in h) >= 3
        ][:20]
        index = service.catalogue.index["fresh-1"]
        assert service.pipeline is not None
        matrix = service.history_matrix([service.user_history(u) or [] for u in readers])
        users = np.array([bundle.state.users.encode_one(u) for u in readers])
        retrieved = service.pipeline.retrieve(users, matrix)
        assert (retrieved.candidates.books == index).any(axis=1).sum() >= 3
        # an event on it is accepted; it is excluded from that reader's list afterwards
        reader = readers[0]
        client.post("/events", json={"user_id": reader, "book_id": "fresh-1", "type": "read"})
        recs = recommend(client, reader, 50)["recommendations"]
        assert "fresh-1" not in {i["book_id"] for i in recs}
    restarted = RecommendationService(bundle, 10.0, live=live)
    assert "fresh-1" in restarted.catalogue.index
    top, _ = restarted.retriever.search(  # as close as before the restart (the 30 above)
        restarted.retriever.book_embeddings[[restarted.catalogue.index["b5"]]], 30, [set()]
    )
    assert restarted.catalogue.index["fresh-1"] in top[0]
    restarted.close()


def test_erased_users_never_reach_training_data_again(tmp_path: Path) -> None:
    """`recsys data prepare` / `train` drop users erased in the serving store, also from data
    prepared before the erasure."""
    from tests.helpers.hydra import compose_config

    from recsys.runner import load_or_prepare

    small = ["data.reader.n_users=200", "data.reader.n_books=150"]
    cfg = compose_config("prepare", tmp_path, small)
    data = load_or_prepare(cfg)
    victim = str(data.train.get_column("user_id")[0])
    store = open_store(str(cfg.paths.store_url))
    store.users.delete_user(victim, "test")
    again = load_or_prepare(compose_config("prepare", tmp_path, small))
    for frame in (again.train, again.val, again.users):
        if "user_id" in frame.columns:
            assert victim not in frame.get_column("user_id").to_list()
    assert again.train.height > 0


def test_a_store_shared_with_another_dataset_still_serves(
    trained_bundle: dict[str, Any], tmp_path: Path
) -> None:
    """A store whose catalogue was seeded by another bundle (another dataset) does not delist
    this bundle's books nor embed the foreign ones."""
    bundle = load_bundle(trained_bundle["bundle"])
    store = open_store(f"sqlite:///{tmp_path / 'shared.db'}")
    store.catalogue.seed_books(pl.DataFrame({"book_id": [f"isbn-{i}" for i in range(50)]}))
    live = Live(stores=store)
    service = RecommendationService(bundle, 10.0, live=live)
    assert service.catalogue.listed[2:].all()
    assert "isbn-0" not in service.catalogue.index  # seeded by a bundle: not "added"
    user_id, _ = short_history_user(trained_bundle)
    assert len(service.for_user(user_id, 10, [], None).books) == 10
    service.close()
