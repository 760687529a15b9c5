"""A reader's "not for me" over real HTTP: not_interested and dislike events leave the book out
of the next list at once, survive a restart, are listed and withdrawn through
/users/{id}/preferences, are never reading history or trending, and go with erasure."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from recsys.bundle.reader import load_bundle
from recsys.errors import RecsysError
from recsys.serving.app import create_app
from recsys.serving.auth import Authenticator
from recsys.serving.live import Live
from recsys.serving.local import serve_in_thread
from recsys.serving.service import RecommendationService
from recsys.stores import open_store

pytestmark = pytest.mark.integration
SECRET = "preferences-tests-only-secret-0123456789abcdef"


def bearer(sub: str, scopes: list[str] | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {Authenticator(secret=SECRET).issue(sub, scopes)}"}


@contextmanager
def server(bundle: Path, store: Path) -> Iterator[httpx.Client]:
    """A server on ``store``: a second one on the same file is the first one restarted."""
    live = Live.from_config(
        {"store": {"url": f"sqlite:///{store}"}, "auth": {"enabled": True, "secret": SECRET}}
    )
    app = create_app(lambda: RecommendationService(load_bundle(bundle), 10.0, live=live))
    with serve_in_thread(app) as base, httpx.Client(base_url=base, timeout=30) as client:
        yield client


def listed(client: httpx.Client, user: str) -> list[str]:
    answer = client.post(f"/recommendations/users/{user}", json={"limit": 10}, headers=bearer(user))
    assert answer.status_code == 200, answer.text
    assert answer.json()["metadata"]["source"] == "personalized"
    return [b["book_id"] for b in answer.json()["recommendations"]]


def mark(client: httpx.Client, user: str, book: str, kind: str) -> None:
    event = {"user_id": user, "book_id": book, "type": kind}
    assert client.post("/events", json=event, headers=bearer(user)).status_code == 202


def test_not_for_me_leaves_the_list_at_once_survives_a_restart_and_can_be_withdrawn(
    trained_bundle: dict[str, Any], tmp_path: Path
) -> None:
    bundle = Path(trained_bundle["bundle"])
    user = str(load_bundle(bundle).known_histories.row(0)[0])
    store = tmp_path / "store.db"
    books = load_bundle(bundle).books
    in_series = set(books.filter(books["series"].is_not_null())["book_id"].to_list())
    with server(bundle, store) as client:
        original = listed(client, user)
        # books outside series: leaving out a volume can let a later one stand (reading order)
        first, second = [b for b in original if b not in in_series][:2]
        before = [b for b in original if b not in (first, second)]
        mark(client, user, first, "not_interested")
        mark(client, user, second, "dislike")
        after = listed(client, user)
        assert first not in after
        assert second not in after
        assert after[:8] == before[:8]  # the rest moves up; nothing else changes
        marks = client.get(f"/users/{user}/preferences", headers=bearer(user)).json()
        assert [(p["book_id"], p["type"]) for p in marks["preferences"]] == [
            (first, "not_interested"),
            (second, "dislike"),
        ]
        assert all(p["title"] for p in marks["preferences"])
        other = client.get(f"/users/{user}/preferences", headers=bearer("someone-else"))
        assert other.status_code == 403
        history = client.get(f"/users/{user}/history", headers=bearer(user)).json()["history"]
        assert not [h for h in history if h["source"] == "event"]  # marks are not reading
        why = client.post(
            f"/users/{user}/preview",
            json={"limit": 10, "book_id": first},
            headers=bearer("ops", ["users:read:any"]),
        ).json()["why"]
        assert why["verdict"] == "not_interested"

    batch = RecommendationService(
        load_bundle(bundle), live=Live.from_config({"store": {"url": f"sqlite:///{store}"}})
    )  # batch scoring reads the same store
    ((scored_user, scored),) = batch.score_users([user], 10)
    assert scored_user == user
    assert not {first, second} & {batch.catalogue.ids[b] for b in scored.books}
    batch.close()
    batch.live.close()

    with server(bundle, store) as client:  # restarted on the same store
        assert listed(client, user) == after
        withdrawn = client.delete(
            f"/users/{user}/preferences", params={"book_id": first}, headers=bearer(user)
        )
        assert withdrawn.json() == {"user_id": user, "removed": 1}
        assert listed(client, user).index(first) == original.index(first)  # back at once
        nul = client.delete(
            f"/users/{user}/preferences", params={"book_id": "\x00"}, headers=bearer(user)
        )
        assert nul.status_code == 422  # PostgreSQL text cannot hold NUL: refused before
        everything = client.delete(f"/users/{user}/preferences", headers=bearer(user))
        assert everything.json()["removed"] == 1
        assert listed(client, user) == original
        assert client.get(f"/users/{user}/preferences", headers=bearer(user)).json() == {
            "user_id": user,
            "preferences": [],
        }


def test_marks_are_not_trending_and_go_with_erasure(
    trained_bundle: dict[str, Any], tmp_path: Path
) -> None:
    bundle = Path(trained_bundle["bundle"])
    readers = load_bundle(bundle).known_histories.get_column("user_id").to_list()[:30]
    with server(bundle, tmp_path / "store.db") as client:
        hot = client.get("/recommendations/trending", params={"limit": 5}).json()
        top = [b["book_id"] for b in hot["recommendations"]]
        unloved = next(
            b for b in listed(client, str(readers[0])) if b not in top
        )  # a listed book, not trending
        for reader in readers:
            mark(client, str(reader), unloved, "dislike")
        again = client.get("/recommendations/trending", params={"limit": 5}).json()
        assert unloved not in [b["book_id"] for b in again["recommendations"]]
        gone = str(readers[1])
        assert client.delete(f"/users/{gone}", headers=bearer(gone)).status_code == 200
        assert client.get(f"/users/{gone}/preferences", headers=bearer(gone)).status_code == 404


def test_marks_are_never_history_types(tmp_path: Path) -> None:
    with pytest.raises(RecsysError, match="never reading history"):
        open_store(f"sqlite:///{tmp_path / 's.db'}", ["read", "dislike"])
    with pytest.raises(RecsysError, match="history_types"):
        Live.from_config({"store": {"url": None, "history_types": ["read", "not_interested"]}})


def test_less_of_an_author_ranks_their_books_lower_until_withdrawn(
    trained_bundle: dict[str, Any], tmp_path: Path
) -> None:
    bundle = Path(trained_bundle["bundle"])
    books = load_bundle(bundle).books
    author = dict(zip(books["book_id"], books["authors"], strict=True))
    readers = [str(u) for u in load_bundle(bundle).known_histories["user_id"].head(40)]
    with server(bundle, tmp_path / "store.db") as client:

        def places(user: str) -> tuple[list[str], list[int]]:
            answer = client.post(
                f"/recommendations/users/{user}", json={"limit": 50}, headers=bearer(user)
            )
            assert answer.status_code == 200, answer.text
            got = [b["book_id"] for b in answer.json()["recommendations"]]
            return got, [i for i, b in enumerate(got) if author[b] == author[got[0]]]

        # a reader whose list holds several books of its top book's author
        user, before, theirs = next(
            (u, got, at) for u in readers for got, at in [places(u)] if len(at) >= 3
        )
        mark(client, user, before[0], "less_of_author")
        now = places(user)[0]
        # the same books, each lower down (or out of the 50)
        moved = [now.index(before[i]) if before[i] in now else 50 for i in theirs]
        assert all(m >= i for m, i in zip(moved, theirs, strict=True))
        assert sum(moved) > sum(theirs)
        assert now[0] != before[0]
        marks = client.get(f"/users/{user}/preferences", headers=bearer(user)).json()
        assert [(p["book_id"], p["type"]) for p in marks["preferences"]] == [
            (before[0], "less_of_author")
        ]
        client.delete(f"/users/{user}/preferences", headers=bearer(user))
        assert places(user)[0] == before  # withdrawn: the list as it was


def test_less_of_an_author_needs_one_and_marks_are_listed_by_kind(
    trained_bundle: dict[str, Any], tmp_path: Path
) -> None:
    bundle = Path(trained_bundle["bundle"])
    user = str(load_bundle(bundle).known_histories.row(0)[0])
    book = str(load_bundle(bundle).books["book_id"][3])
    with server(bundle, tmp_path / "store.db") as client:
        anonymous = {"book_id": "anon-1", "title": "Anonymous Pamphlet"}
        added = client.post("/books", json=anonymous, headers=bearer("ed", ["catalogue:write"]))
        assert added.status_code == 201, added.text
        refused = client.post(
            "/events",
            json={"user_id": user, "book_id": "anon-1", "type": "less_of_author"},
            headers=bearer(user),
        )
        assert refused.status_code == 422
        assert "no author" in refused.text
        mark(client, user, book, "not_interested")
        mark(client, user, book, "less_of_author")
        marks = client.get(f"/users/{user}/preferences", headers=bearer(user)).json()
        assert sorted(p["type"] for p in marks["preferences"]) == [
            "less_of_author",
            "not_interested",
        ]
