"""Follows and "friends are reading" over real HTTP (issue #22): a reader follows another;
the followee's books join the reader's candidates (the console's preview names the source) and
listed ones carry the reason; unfollowing takes them out at once (the response cache is on);
bad requests are 4xx with a message; erasure removes follows both ways."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from recsys.bundle.reader import load_bundle
from recsys.serving.app import create_app
from recsys.serving.auth import Authenticator
from recsys.serving.live import Live
from recsys.serving.local import serve_in_thread
from recsys.serving.service import RecommendationService

pytestmark = pytest.mark.integration
SECRET = "follows-tests-only-secret-0123456789abcdef"
OPERATOR = ["users:read:any", "users:delete:any"]
LIMIT = 10


def bearer(sub: str, scopes: list[str] | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {Authenticator(secret=SECRET).issue(sub, scopes)}"}


@pytest.fixture
def served(trained_bundle: dict[str, Any], tmp_path: Path) -> Iterator[tuple[httpx.Client, Any]]:
    live = Live.from_config(
        {
            "store": {"url": f"sqlite:///{tmp_path / 'store.db'}"},
            "auth": {"enabled": True, "secret": SECRET},
            "cache": {"enabled": True, "ttl_s": 600},
        }
    )
    bundle = load_bundle(trained_bundle["bundle"])
    app = create_app(lambda: RecommendationService(bundle, 10.0, live=live))
    with serve_in_thread(app) as base, httpx.Client(base_url=base, timeout=30) as http:
        yield http, bundle


def recommended(client: httpx.Client, user: str) -> list[dict[str, Any]]:
    answer = client.post(
        f"/recommendations/users/{user}", json={"limit": LIMIT}, headers=bearer(user)
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["metadata"]["source"] == "personalized"
    return list(answer.json()["recommendations"])


def candidates(client: httpx.Client, user: str) -> dict[str, dict[str, Any]]:
    answer = client.post(
        f"/users/{user}/preview", json={"limit": LIMIT}, headers=bearer("ops", OPERATOR)
    )
    assert answer.status_code == 200, answer.text
    return {c["book_id"]: c for c in answer.json()["candidates"]}


def read(client: httpx.Client, user: str, books: list[str]) -> None:
    for book in books:
        event = {"user_id": user, "book_id": book, "type": "read"}
        assert client.post("/events", json=event, headers=bearer(user)).status_code == 202


def follow(client: httpx.Client, user: str, followee: str) -> httpx.Response:
    return client.post(
        f"/users/{user}/follows", json={"followee_id": followee}, headers=bearer(user)
    )


def test_friends_books_join_the_candidates_with_their_reason(
    served: tuple[httpx.Client, Any],
) -> None:
    client, bundle = served
    ann = str(bundle.known_histories.row(0)[0])
    before = recommended(client, ann)
    assert not any("whom you follow" in b["reasoning"] for b in before)
    offered = candidates(client, ann)
    # books the model does not propose to ann (series openers or books outside any series,
    # so reading order cannot hold them back)
    read_by_ann = set(bundle.known_histories.row(0)[1])
    books = bundle.books
    others = [
        str(b)
        for b, pos in zip(books["book_id"], books["series_position"], strict=True)
        if str(b) not in offered and str(b) not in read_by_ann and pos in (None, 1)
    ][:3]
    assert len(others) == 3
    # and two books ann is recommended for what she read (a series note or a pin's words
    # stay first: they say where the book stands)
    model_reasons = ("because you read", "readers of")
    top = [b["book_id"] for b in before if b["reasoning"].startswith(model_reasons)][:2]
    assert len(top) == 2
    read(client, "fred", [*others, *top])

    first = follow(client, ann, "fred")
    assert first.status_code == 200, first.text
    assert first.json() == {"user_id": ann, "followee_id": "fred", "created": True}
    assert follow(client, ann, "fred").json()["created"] is False  # idempotent
    listed = client.get(f"/users/{ann}/follows", headers=bearer(ann)).json()
    assert [f["user_id"] for f in listed["follows"]] == ["fred"]

    after = recommended(client, ann)  # the cached list was dropped with the follow
    reasons = {b["book_id"]: b["reasoning"] for b in after}
    for book in top:
        assert reasons.get(book) == "fred, whom you follow, read this", reasons
    assert not any(
        "whom you follow" in why for book, why in reasons.items() if book not in {*others, *top}
    )
    offered = candidates(client, ann)
    for book in others:  # the source brought them in
        assert offered[book]["sources"].get("friends") is not None, offered.get(book)
        assert offered[book]["reasoning"] == "fred, whom you follow, read this"

    gone = client.delete(f"/users/{ann}/follows/fred", headers=bearer(ann))
    assert gone.status_code == 200
    assert gone.json()["removed"] is True
    assert (
        client.delete(f"/users/{ann}/follows/fred", headers=bearer(ann)).json()["removed"] is False
    )
    assert not any("whom you follow" in b["reasoning"] for b in recommended(client, ann))
    assert not any(book in candidates(client, ann) for book in others)


def test_bad_follows_are_refused_with_a_message(
    served: tuple[httpx.Client, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, bundle = served
    ann = str(bundle.known_histories.row(0)[0])
    from recsys.serving import users

    monkeypatch.setattr(users, "MAX_FOLLOWS", 1)
    read(client, "fred", [str(bundle.books["book_id"][3])])
    read(client, "gus", [str(bundle.books["book_id"][4])])
    assert follow(client, ann, "fred").status_code == 200
    assert follow(client, ann, "fred").status_code == 200  # again: still allowed
    over = follow(client, ann, "gus")
    assert over.status_code == 422
    assert "at most 1 readers" in over.json()["detail"]
    assert client.delete(f"/users/{ann}/follows/fred", headers=bearer(ann)).status_code == 200
    myself = follow(client, ann, ann)
    assert myself.status_code == 422
    assert "themselves" in myself.json()["detail"]
    nobody = follow(client, ann, "nobody-at-all")
    assert nobody.status_code == 404
    assert "nobody-at-all" in nobody.json()["detail"]
    other = client.post(
        f"/users/{ann}/follows", json={"followee_id": "fred"}, headers=bearer("mallory")
    )
    assert other.status_code == 403
    extra = client.post(
        f"/users/{ann}/follows", json={"followee_id": "x", "also": 1}, headers=bearer(ann)
    )
    assert extra.status_code == 422
    empty = client.post(f"/users/{ann}/follows", json={"followee_id": ""}, headers=bearer(ann))
    assert empty.status_code == 422


def test_erasure_removes_follows_both_ways(served: tuple[httpx.Client, Any]) -> None:
    client, bundle = served
    ann, bob = (str(bundle.known_histories.row(i)[0]) for i in (0, 1))
    read(client, "fred", [str(bundle.books["book_id"][3])])
    assert follow(client, ann, "fred").status_code == 200
    # ann reads two of the books bob is recommended; bob follows ann: his cached list names her
    model_reasons = ("because you read", "readers of")
    top = [
        b["book_id"] for b in recommended(client, bob) if b["reasoning"].startswith(model_reasons)
    ]
    read(client, ann, top[:2])
    assert follow(client, bob, ann).status_code == 200
    assert any(f"{ann}, whom you follow" in b["reasoning"] for b in recommended(client, bob))
    erased = client.delete(f"/users/{ann}", headers=bearer("ops", OPERATOR))
    assert erased.status_code == 200, erased.text
    assert erased.json()["removed"]["follows"] == 2
    # the follower's cached list went with her: nothing of ann's is named any more
    assert not any(ann in b["reasoning"] for b in recommended(client, bob))
    assert client.get(f"/users/{bob}/follows", headers=bearer(bob)).json()["follows"] == []
    assert follow(client, bob, ann).status_code == 404  # an erased reader cannot be followed
    assert follow(client, ann, "fred").status_code == 404  # nor follow anyone
