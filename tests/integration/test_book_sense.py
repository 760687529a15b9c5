"""Works and series over real HTTP on the synthetic bundle (which has series and Spanish
editions): volumes come in reading order, "next in series" has its own reason, no edition of a
read work is recommended, one edition per work, and the catalogue API takes the keys."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import polars as pl
import pytest

from recsys.bundle.reader import load_bundle
from recsys.data.works import Works
from recsys.serving.app import create_app
from recsys.serving.live import Live
from recsys.serving.local import serve_in_thread
from recsys.serving.service import RecommendationService

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def served(
    trained_bundle: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[httpx.Client]:
    db = tmp_path_factory.mktemp("book_sense") / "store.db"
    live = Live.from_config({"store": {"url": f"sqlite:///{db}"}, "auth": {"enabled": False}})
    bundle = load_bundle(trained_bundle["bundle"])
    app = create_app(lambda: RecommendationService(bundle, 10.0, live=live))
    with serve_in_thread(app) as base, httpx.Client(base_url=base, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def books(trained_bundle: dict[str, Any]) -> pl.DataFrame:
    return load_bundle(trained_bundle["bundle"]).books


def recommend(client: httpx.Client, user: str, limit: int = 50) -> list[dict[str, Any]]:
    answer = client.post(f"/recommendations/users/{user}", json={"limit": limit})
    assert answer.status_code == 200, answer.text
    assert answer.json()["metadata"]["source"] == "personalized"
    return list(answer.json()["recommendations"])


def read(client: httpx.Client, user: str, book_ids: list[str]) -> None:
    events = [{"user_id": user, "book_id": b, "type": "read"} for b in book_ids]
    assert client.post("/events", json={"events": events}).status_code == 202


def series_volumes(books: pl.DataFrame, length: int) -> list[str]:
    """The book ids of a series with at least ``length`` volumes, in order."""
    series = books.filter(pl.col("series").is_not_null())
    counts = series.group_by("series").len().filter(pl.col("len") >= length).sort("series")
    name = counts["series"][0]
    return series.filter(pl.col("series") == name).sort("series_position")["book_id"].to_list()


def test_lists_keep_series_in_reading_order_and_one_edition_per_work(
    served: httpx.Client, trained_bundle: dict[str, Any], books: pl.DataFrame
) -> None:
    """Over many readers' lists: no volume while an earlier one is unread (and could be
    proposed), no edition of a read work, no work twice."""
    bundle = load_bundle(trained_bundle["bundle"])
    works = Works.of_vocabulary(bundle.state.books.ids, books)
    index = {b: i + 2 for i, b in enumerate(bundle.state.books.ids.to_list())}
    users = bundle.known_histories.head(60)
    checked_series = 0
    for user, history in users.iter_rows():
        read_works = works.works_read([index[b] for b in history])
        listed = [index[r["book_id"]] for r in recommend(served, str(user))]
        listed_works = [works.work_of(b) for b in listed]
        assert len(set(listed_works)) == len(listed_works), user
        assert not set(listed_works) & read_works, user
        for book in listed:
            series = works.series_of(book)
            if series < 0:
                continue
            checked_series += 1
            earlier = [
                v for v in works.volumes(series) if works.position_of(v) < works.position_of(book)
            ]
            assert all(works.work_of(v) in read_works for v in earlier), (user, book)
    assert checked_series > 20  # the lists do hold series books


def test_next_in_series_is_proposed_with_its_reason(
    served: httpx.Client, books: pl.DataFrame
) -> None:
    volumes = series_volumes(books, 4)
    title = dict(zip(books["book_id"], books["title"], strict=True))
    name = books.filter(pl.col("book_id") == volumes[0])["series"][0]
    read(served, "series-reader", volumes[:2])
    listed = recommend(served, "series-reader", 50)
    ids = [r["book_id"] for r in listed]
    assert volumes[2] in ids, f"{title[volumes[2]]} not proposed after #1 and #2"
    assert not set(volumes[3:]) & set(ids)  # #4 and later wait for #3
    reason = next(r["reasoning"] for r in listed if r["book_id"] == volumes[2])
    assert reason == f"next in {name} after #2"


def test_a_later_volume_gives_way_to_the_first_unread_one(
    served: httpx.Client, books: pl.DataFrame
) -> None:
    """A reader of #3 only: #4 onwards never comes before #1 and #2 are read."""
    volumes = series_volumes(books, 5)
    read(served, "middle-reader", [volumes[2]])
    ids = [r["book_id"] for r in recommend(served, "middle-reader", 50)]
    assert not set(volumes[1:]) & set(ids)  # #2 waits for #1, #4 and #5 for both
    read(served, "middle-reader", [volumes[0], volumes[1]])
    ids = [r["book_id"] for r in recommend(served, "middle-reader", 50)]
    assert volumes[3] in ids
    assert volumes[4] not in ids


def test_no_other_edition_of_a_read_work(served: httpx.Client, books: pl.DataFrame) -> None:
    editions = books.filter(pl.col("title").str.ends_with("(Spanish Edition)"))
    assert editions.height > 0
    spanish = editions.row(0, named=True)
    original = books.filter(
        (pl.col("work_id") == spanish["work_id"]) & (pl.col("book_id") != spanish["book_id"])
    )["book_id"][0]
    read(served, "edition-reader", [original])
    ids = [r["book_id"] for r in recommend(served, "edition-reader", 50)]
    assert spanish["book_id"] not in ids
    assert original not in ids
    similar = served.post(f"/recommendations/books/{original}", json={"limit": 50})
    assert similar.status_code == 200, similar.text
    similar_ids = [r["book_id"] for r in similar.json()["recommendations"]]
    assert spanish["book_id"] not in similar_ids  # an edition is not a "similar book"


def test_not_interested_leaves_out_every_edition(served: httpx.Client, books: pl.DataFrame) -> None:
    spanish = books.filter(pl.col("title").str.ends_with("(Spanish Edition)")).row(0, named=True)
    work = books.filter(pl.col("work_id") == spanish["work_id"])["book_id"].to_list()
    events = [{"user_id": "picky", "book_id": spanish["book_id"], "type": "not_interested"}]
    read(served, "picky", [books["book_id"][0]])
    assert served.post("/events", json={"events": events}).status_code == 202
    ids = [r["book_id"] for r in recommend(served, "picky", 50)]
    assert not set(work) & set(ids)


def test_the_catalogue_takes_and_derives_works_and_series(served: httpx.Client) -> None:
    created = served.post(
        "/books",
        json={
            "book_id": "hg-2",
            "title": "Catching Fire (The Hunger Games, #2)",
            "authors": "Suzanne Collins",
        },
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert (body["series"], body["series_position"]) == ("The Hunger Games", 2.0)
    assert body["work_id"] == "t:catching fire|suzannecollins"
    edition = served.post(
        "/books",
        json={
            "book_id": "hg-2-es",
            "title": "En llamas",
            "authors": "Suzanne Collins",
            "series": "The Hunger Games",
            "series_position": 2,
            "work_id": body["work_id"],
        },
    )
    assert edition.status_code == 201, edition.text
    renamed = served.put("/books/hg-2", json={"title": "Catching Fire"})
    assert renamed.status_code == 200
    # an edit that leaves the keys alone keeps them
    assert renamed.json()["series"] == "The Hunger Games"
    assert renamed.json()["work_id"] == body["work_id"]
    half = served.post("/books", json={"book_id": "x-1", "title": "X", "series": "Only"})
    assert half.status_code == 422
    assert "series and series_position go together" in half.text
    # the new volume is gated like the bundle's: a reader of its other edition never gets it
    read(served, "hunger-reader", ["hg-2-es"])
    ids = [r["book_id"] for r in recommend(served, "hunger-reader", 50)]
    assert "hg-2" not in ids


def test_batch_scoring_follows_the_same_rules(trained_bundle: dict[str, Any]) -> None:
    """Offline lists go through the same path: one edition per work there too."""
    bundle = load_bundle(trained_bundle["bundle"])
    service = RecommendationService(bundle, 10.0)
    works = service.catalogue.works
    users = bundle.known_histories["user_id"].head(40).to_list()
    for _user, answer in service.score_users([str(u) for u in users], 30):
        listed = [works.work_of(b) for b in answer.books]
        assert len(set(listed)) == len(listed)


def test_the_preview_names_the_book_rules(served: httpx.Client, books: pl.DataFrame) -> None:
    """The console's "why not" for a book kept out by works or series."""
    volumes = series_volumes(books, 5)
    read(served, "gated-reader", [volumes[2]])

    def why(user: str, book: str) -> dict[str, Any]:
        answer = served.post(f"/users/{user}/preview", json={"limit": 10, "book_id": book})
        assert answer.status_code == 200, answer.text
        verdict: dict[str, Any] = answer.json()["why"]
        return verdict

    gated = why("gated-reader", volumes[4])
    assert gated["verdict"] == "earlier_volume_unread"
    assert "#5 of" in gated["detail"]
    assert "waits for #1" in gated["detail"]
    spanish = books.filter(pl.col("title").str.ends_with("(Spanish Edition)")).row(1, named=True)
    original = books.filter(
        (pl.col("work_id") == spanish["work_id"]) & (pl.col("book_id") != spanish["book_id"])
    )["book_id"][0]
    read(served, "edition-reader-2", [original])
    assert why("edition-reader-2", spanish["book_id"])["verdict"] == "edition_read"
