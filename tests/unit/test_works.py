"""Works and series: derived keys, the per-index table, and reading order on ranked lists."""

from __future__ import annotations

import polars as pl
import pytest

from recsys.data.io import build_dataset
from recsys.data.works import Works, derive_book_keys
from recsys.serving.reading_order import SERIES_NEXT, SERIES_START, ReadingOrder

KEYS = {"series": pl.String, "series_position": pl.Float32, "work_id": pl.String}


def keys(rows: list[dict[str, object]]) -> list[tuple[object, object, object]]:
    frame = pl.DataFrame(
        rows, schema={"book_id": pl.String, "title": pl.String, "authors": pl.String, **KEYS}
    )
    out = derive_book_keys(frame)
    return list(zip(out["series"], out["series_position"], out["work_id"], strict=True))


def test_series_are_read_from_goodreads_titles() -> None:
    got = keys(
        [
            {"book_id": "1", "title": "The Hunger Games (The Hunger Games, #1)", "authors": "S"},
            {"book_id": "2", "title": "Catching Fire (The Hunger Games #2.5)", "authors": "S"},
            {"book_id": "3", "title": "Omnibus (The Saga, #1-3)", "authors": "S"},
            {"book_id": "4", "title": "No series (here)", "authors": "S"},
        ]
    )
    assert got[0][:2] == ("The Hunger Games", 1.0)
    assert got[1][:2] == ("The Hunger Games", 2.5)
    assert got[2][:2] == (None, None)  # an omnibus is not a position
    assert got[3][:2] == (None, None)


def test_editions_share_a_derived_work_and_given_keys_are_kept() -> None:
    got = keys(
        [
            {"book_id": "a", "title": "Café Noir (Spanish Edition)", "authors": "José Pérez, X"},
            {"book_id": "b", "title": "Cafe noir", "authors": "Jose Perez"},
            {"book_id": "c", "title": "Cafe noir", "authors": "Someone Else"},
            {"book_id": "d", "title": None, "authors": None},
            {
                "book_id": "e",
                "title": "T",
                "authors": "A",
                "series": "Given",
                "series_position": 3.0,
                "work_id": "77",
            },
            {"book_id": "f", "title": "T (S, #2)", "authors": "A", "series": "Only a name"},
        ]
    )
    assert got[0][2] == got[1][2] == "t:cafe noir|joseperez"
    assert got[2][2] != got[0][2]  # another author's book of that title is another work
    assert got[3][2] == "b:d"  # no title: its own work
    assert got[4] == ("Given", 3.0, "77")
    assert got[5][:2] == ("S", 2.0)  # a series without a position is read from the title


def test_every_reader_derives_the_keys() -> None:
    data = build_dataset(
        "t",
        pl.DataFrame({"user_id": ["u"], "book_id": ["1"]}),
        pl.DataFrame({"book_id": ["1"], "title": ["Dune (Dune Chronicles, #1)"]}),
    )
    row = data.books.row(0, named=True)
    assert (row["series"], row["series_position"]) == ("Dune Chronicles", 1.0)
    assert row["work_id"] == "t:dune|"


def table() -> tuple[Works, dict[str, int]]:
    """Series S: s1, s2 (two editions of volume 2), s3, s4; plain books p and its edition p'."""
    books = pl.DataFrame(
        {
            "book_id": ["s3", "s1", "s2", "s2es", "s4", "p", "pes", "q"],
            "series": ["S", "S", "S", "S", "S", None, None, None],
            "series_position": [3.0, 1.0, 2.0, 2.0, 4.0, None, None, None],
            "work_id": ["w3", "w1", "w2", "w2", "w4", "wp", "wp", "wq"],
        }
    )
    ids = books["book_id"].to_list()
    works = Works.of_vocabulary(ids, books)
    return works, {b: i + 2 for i, b in enumerate(ids)}


def test_volumes_in_reading_order_and_next_volumes() -> None:
    works, at = table()
    series = works.series_of(at["s1"])
    assert works.volumes(series) == [at["s1"], at["s2"], at["s2es"], at["s3"], at["s4"]]
    assert works.next_volumes([at["s1"]], 5) == [at["s2"]]
    assert works.next_volumes([at["s1"], at["s2es"]], 5) == [at["s3"]]  # any edition read
    assert works.next_volumes([at["p"]], 5) == []
    works.update(at["s4"], {"book_id": "s4", "work_id": "w4"})  # an edit takes it out
    assert at["s4"] not in works.volumes(series)
    new = works.append({"book_id": "s5", "series": "S", "series_position": 5, "work_id": "w5"})
    assert works.volumes(series)[-1] == new


def test_reading_order_on_a_ranked_list() -> None:
    works, at = table()
    order = ReadingOrder(works)
    everything = lambda _b: True  # noqa: E731
    ranked = [(at[b], 10.0 - i) for i, b in enumerate(["s3", "pes", "p", "s2", "q", "s1"])]
    # a reader of p, nothing of the series: s3 gives its slot to s1, the series' start;
    # p's edition is left out; s2 waits (s1 is unread); s1 is listed already
    picks = order.pick(ranked, [at["p"]], everything, 10)
    assert [(p.book, p.note) for p in picks] == [(at["s1"], SERIES_START), (at["q"], None)]
    assert picks[0].score == 10.0
    assert picks[0].replaced == at["s3"]
    assert order.reason(picks[0], [at["p"]]) == "#1 of S: the series starts here"
    # a reader of s1 and s2: s3 is next, with its reason; s2's other edition never comes
    history = [at["s1"], at["s2"]]
    ranked = [(at[b], 1.0) for b in ["s2es", "s4", "s3", "pes", "p"]]
    picks = order.pick(ranked, history, everything, 10)
    assert [(p.book, p.note) for p in picks] == [
        (at["s3"], SERIES_NEXT),  # in s4's place
        (at["pes"], None),
    ]
    assert order.reason(picks[0], history) == "next in S after #2"


def test_a_volume_that_cannot_be_offered_does_not_hold_the_series_back() -> None:
    works, at = table()
    order = ReadingOrder(works)
    not_s1 = lambda b: b != at["s1"]  # noqa: E731  (s1 filtered out, or "not interested")
    picks = order.pick([(at["s2"], 1.0)], [], not_s1, 5)
    assert [(p.book, p.note) for p in picks] == [(at["s2"], None)]
    picks = order.pick([(at["s3"], 1.0)], [], not_s1, 5)
    assert [(p.book, p.note) for p in picks] == [(at["s2"], SERIES_START)]


def test_works_only_and_taken_books() -> None:
    works, at = table()
    order = ReadingOrder(works)
    ranked = [(at["s3"], 1.0), (at["pes"], 0.5), (at["q"], 0.2)]
    picks = order.pick(ranked, [], lambda _b: True, 5, taken=[at["p"]], in_order=False)
    assert [p.book for p in picks] == [at["s3"], at["q"]]  # no gate; p's work is taken


@pytest.mark.parametrize("limit", [0, 1])
def test_the_limit_is_kept(limit: int) -> None:
    works, at = table()
    ranked = [(at["p"], 1.0), (at["q"], 0.5)]
    assert len(ReadingOrder(works).pick(ranked, [], lambda _b: True, limit)) == limit
