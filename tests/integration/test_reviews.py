"""Reviews over real HTTP: one per reader and book, editable, a rating event in the reader's
history, listed with their average, refused for another reader, and gone with erasure."""

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
SECRET = "reviews-tests-only-secret-0123456789abcdef"


def bearer(sub: str, scopes: list[str] | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {Authenticator(secret=SECRET).issue(sub, scopes)}"}


@pytest.fixture
def client(trained_bundle: dict[str, Any], tmp_path: Path) -> Iterator[httpx.Client]:
    live = Live.from_config(
        {
            "store": {"url": f"sqlite:///{tmp_path / 'store.db'}"},
            "auth": {"enabled": True, "secret": SECRET},
        }
    )
    bundle = load_bundle(trained_bundle["bundle"])
    app = create_app(lambda: RecommendationService(bundle, 10.0, live=live))
    with serve_in_thread(app) as base, httpx.Client(base_url=base, timeout=30) as http:
        yield http


def review(
    client: httpx.Client, book: str, user: str, rating: Any, text: str = ""
) -> httpx.Response:
    body = {"user_id": user, "rating": rating, "text": text}
    return client.post(f"/books/{book}/reviews", json=body, headers=bearer(user))


def test_one_review_per_reader_and_book_editable_and_a_rating(
    client: httpx.Client, trained_bundle: dict[str, Any]
) -> None:
    book = str(load_bundle(trained_bundle["bundle"]).books["book_id"][5])
    first = review(client, book, "ann", 4, "Slow start, then wonderful.")
    assert first.status_code == 201, first.text
    assert first.json()["rating"] == 4
    assert review(client, book, "bob", 2, "Not for me.").status_code == 201
    edited = review(client, book, "ann", 5, "Wonderful.")
    assert edited.status_code == 200  # replaced, not a second review
    assert edited.json()["created_at"] == first.json()["created_at"]
    listed = client.get(f"/books/{book}/reviews").json()
    assert listed["count"] == 2
    assert listed["average_rating"] == 3.5
    assert [(r["user_id"], r["rating"], r["text"]) for r in listed["reviews"]] == [
        ("ann", 5, "Wonderful."),  # the latest first
        ("bob", 2, "Not for me."),
    ]
    history = client.get("/users/ann/history", headers=bearer("ann")).json()["history"]
    rated = [h for h in history if h["book_id"] == book and h["source"] == "event"]
    # each write of the review is a rating: it feeds the reader's history and training
    assert [h["type"] for h in rated] == ["rate", "rate"]
    assert client.delete(f"/books/{book}/reviews/bob", headers=bearer("bob")).status_code == 204
    assert client.get(f"/books/{book}/reviews").json()["count"] == 1
    assert client.delete(f"/books/{book}/reviews/bob", headers=bearer("bob")).status_code == 404


def test_bad_reviews_are_refused_with_a_message(
    client: httpx.Client, trained_bundle: dict[str, Any]
) -> None:
    book = str(load_bundle(trained_bundle["bundle"]).books["book_id"][6])
    assert review(client, "no-such-book", "ann", 3).status_code == 404
    assert client.get("/books/no-such-book/reviews").status_code == 404
    for rating in (0, 6, "5", 4.5):
        answer = review(client, book, "ann", rating)
        assert answer.status_code == 422, rating
        assert "rating" in answer.text
    too_long = review(client, book, "ann", 3, "x" * 5001)
    assert too_long.status_code == 422
    for_another = client.post(
        f"/books/{book}/reviews",
        json={"user_id": "bob", "rating": 1},
        headers=bearer("ann"),
    )
    assert for_another.status_code == 403
    assert client.get(f"/books/{book}/reviews").json()["count"] == 0


def test_erasure_removes_the_readers_reviews(
    client: httpx.Client, trained_bundle: dict[str, Any]
) -> None:
    book = str(load_bundle(trained_bundle["bundle"]).books["book_id"][7])
    assert review(client, book, "carol", 5, "Loved it").status_code == 201
    erased = client.delete("/users/carol", headers=bearer("carol"))
    assert erased.status_code == 200, erased.text
    assert erased.json()["removed"]["reviews"] == 1
    assert client.get(f"/books/{book}/reviews").json() == {
        "book_id": book,
        "count": 0,
        "average_rating": None,
        "reviews": [],
    }
