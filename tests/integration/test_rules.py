"""Business rules over real HTTP on the synthetic bundle: a watched YAML file; pins, boosts,
promotion shares, hidden and expired books, required filters and diversity caps show up on the
served lists and are named in their metadata; a wrong file is refused whole and the rules
before it keep serving."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest
import yaml

from recsys.bundle.reader import load_bundle
from recsys.serving.app import create_app
from recsys.serving.live import Live
from recsys.serving.local import serve_in_thread
from recsys.serving.service import RecommendationService

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def setup(
    trained_bundle: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    folder = tmp_path_factory.mktemp("rules")
    file = folder / "rules.yaml"
    file.write_text("{}\n")
    live = Live.from_config(
        {
            "store": {"url": f"sqlite:///{folder / 'store.db'}"},
            "cache": {"enabled": True, "ttl_s": 3600},  # a new file must not serve old lists
            "auth": {"enabled": False},
            "rules": {"file": str(file), "poll_s": 0.1},
        }
    )
    bundle = load_bundle(trained_bundle["bundle"])
    app = create_app(lambda: RecommendationService(bundle, 10.0, live=live))
    with serve_in_thread(app) as base, httpx.Client(base_url=base, timeout=30) as client:
        yield {"client": client, "app": app, "file": file, "bundle": bundle, "folder": folder}


def write(setup: dict[str, Any], raw: Any) -> str | None:
    """Write the rules file, wait until the watcher has read it; its refusal, if any."""
    watcher = setup["app"].state.core.rules_watcher
    before = watcher.mtime
    time.sleep(0.02)  # a distinct mtime
    setup["file"].write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw))
    deadline = time.monotonic() + 10
    while watcher.mtime == before:
        assert time.monotonic() < deadline, "the rules file was never read"
        time.sleep(0.05)
    error: str | None = watcher.error
    return error


def listed(setup: dict[str, Any], user: str, limit: int = 20) -> dict[str, Any]:
    answer = setup["client"].post(f"/recommendations/users/{user}", json={"limit": limit})
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def ids(body: dict[str, Any]) -> list[str]:
    return [r["book_id"] for r in body["recommendations"]]


def readers(setup: dict[str, Any], n: int) -> list[str]:
    return [str(u) for u in setup["bundle"].known_histories["user_id"].head(n).to_list()]


def test_pin_boost_and_promotion_on_the_served_lists(setup: dict[str, Any]) -> None:
    books: pl.DataFrame = setup["bundle"].books
    user = readers(setup, 1)[0]
    history = set(setup["bundle"].known_histories.row(0)[1])
    plain = ids(listed(setup, user))
    spanish = set(books.filter(pl.col("language") == "spa")["book_id"].to_list())
    pinned = next(b for b in books["book_id"].to_list() if b not in history and b not in plain)
    assert sum(b in spanish for b in plain) < 6  # the promotion below has work to do
    error = write(
        setup,
        {
            "filters": {"spanish": {"languages": ["spa"]}},
            "promotions": [{"name": "spanish-share", "filter": "spanish", "at_least": 0.3}],
            "pins": [{"name": "staff-pick", "book_id": pinned, "slot": 2, "reason": "our pick"}],
        },
    )
    assert error is None, error
    body = listed(setup, user)
    got = ids(body)
    assert len(got) == 20
    assert got[1] == pinned
    assert body["recommendations"][1]["reasoning"] == "our pick"
    assert sum(b in spanish for b in got) >= 6  # 30 % of 20 slots
    assert body["metadata"]["rules"] == ["promotion:spanish-share", "pin:staff-pick"]

    error = write(
        setup,
        {
            "filters": {"spanish": {"languages": ["spa"]}},
            "boosts": [{"name": "olé", "filter": "spanish", "factor": 1e9}],
        },
    )
    assert error is not None  # a name outside [A-Za-z0-9_.-]: refused
    assert "boosts.0.name" in error
    assert ids(listed(setup, user)) == got  # the rules before it still serve

    assert (
        write(
            setup,
            {
                "filters": {"spanish": {"languages": ["spa"]}},
                "boosts": [{"name": "spanish-first", "filter": "spanish", "factor": 1e9}],
            },
        )
        is None
    )
    body = listed(setup, user)
    boosted = ids(body)
    # outside series (where an earlier volume may take a later one's slot), a huge boost puts
    # every Spanish book before any other
    in_series = set(books.filter(pl.col("series").is_not_null())["book_id"].to_list())
    first = [b in spanish for b in boosted if b not in in_series]
    assert first[:3] == [True, True, True]
    assert first == sorted(first, reverse=True)
    assert body["metadata"]["rules"] == ["boost:spanish-first"]


def test_hidden_expired_required_and_diversity(setup: dict[str, Any]) -> None:
    books: pl.DataFrame = setup["bundle"].books
    users = readers(setup, 12)
    assert write(setup, {}) is None
    before = {u: ids(listed(setup, u)) for u in users}
    top = before[users[0]][0]
    second = before[users[0]][1]
    stock = books["book_id"].head(1200).to_list()
    (setup["folder"] / "stock.txt").write_text("\n".join(stock) + "\n")
    error = write(
        setup,
        {
            "filters": {"in_stock": {"book_ids_file": "stock.txt"}},
            "require": ["in_stock"],
            "hidden": [top],
            "expires": {second: "2000-01-01T00:00:00Z"},
            "diversity": {"max_per_author": 1},
        },
    )
    assert error is None, error
    authors = dict(zip(books["book_id"], books["authors"], strict=True))
    for user in users:
        body = listed(setup, user)
        got = ids(body)
        assert top not in got
        assert second not in got
        assert set(got) <= set(stock)
        assert max(Counter(authors[b] for b in got).values()) == 1
        assert body["metadata"]["rules"][:3] == ["require:in_stock", "hidden", "expired"]
    trending = setup["client"].get("/recommendations/trending", params={"limit": 50}).json()
    assert not {top, second} & set(ids(trending))  # hidden means everywhere


def test_wrong_files_are_refused_whole(setup: dict[str, Any]) -> None:
    user, history = setup["bundle"].known_histories.row(0)
    pin = next(b for b in setup["bundle"].books["book_id"] if b not in set(history))
    assert write(setup, {"pins": [{"name": "p", "book_id": pin, "slot": 1}]}) is None
    assert ids(listed(setup, str(user)))[0] == pin
    refusals = {
        "unknown filter": {"require": ["nowhere"]},
        "unknown book": {"hidden": ["no-such-book"]},
        "a typo": {"pinz": []},
        "two pins in one slot": {
            "pins": [
                {"name": "a", "book_id": "b1", "slot": 1},
                {"name": "b", "book_id": "b2", "slot": 1},
            ]
        },
        "a share out of range": {
            "filters": {"f": {"year_min": 1}},
            "promotions": [{"name": "x", "filter": "f", "at_least": 2}],
        },
        "a time without a zone": {
            "pins": [{"name": "p", "book_id": "b1", "slot": 1, "until": "2030-01-01T00:00:00"}]
        },
        "a missing ids file": {"filters": {"f": {"book_ids_file": "nope.txt"}}},
        "not YAML": "filters: [unclosed\n",
        "not a mapping": "- a list\n",
    }
    for what, raw in refusals.items():
        error = write(setup, raw)
        assert error, what
        view = setup["client"].get("/ops/rules").json()
        assert view["error"] == error, what
        assert view["rules"]["pins"][0]["book_id"] == pin, what  # still in force
        assert ids(listed(setup, str(user)))[0] == pin, what
    messages = " ".join(str(write(setup, raw)) for raw in list(refusals.values())[:2])
    assert "unknown filter(s) ['nowhere']" in messages
    assert "unknown book id(s) ['no-such-book']" in messages


def test_rules_status_for_operators(setup: dict[str, Any]) -> None:
    assert write(setup, {"hidden": ["b3"]}) is None
    view = setup["client"].get("/ops/rules").json()
    assert view["file"] == str(setup["file"])
    assert view["rules"] == {"hidden": ["b3"]}
    assert view["error"] is None
    assert view["version"].startswith("r-")


def test_rules_file_example_is_valid() -> None:
    """The example in configs/ parses (its ids file next to it)."""
    from recsys.serving.rules import Rules

    example = Path(__file__).parents[2] / "configs" / "rules.example.yaml"
    rules = Rules.parse(yaml.safe_load(example.read_text()), example.parent, "r1")
    assert rules.spec.pins
    assert rules.spec.promotions


def test_pins_keep_works_and_reading_order(setup: dict[str, Any]) -> None:
    books: pl.DataFrame = setup["bundle"].books
    user, history = setup["bundle"].known_histories.row(0)
    read = set(history)
    work = dict(zip(books["book_id"], books["work_id"], strict=True))
    read_works = {work[b] for b in read}
    series = books.filter(pl.col("series").is_not_null())
    untouched = (
        series.group_by("series")
        .agg(pl.col("book_id"))
        .filter(
            pl.col("book_id").list.eval(pl.element().is_in(list(read))).list.any().not_()
            & (pl.col("book_id").list.len() >= 3)
        )
    )
    name = untouched["series"][0]
    volumes = series.filter(pl.col("series") == name).sort("series_position")["book_id"]
    spanish = books.filter(
        pl.col("title").str.ends_with("(Spanish Edition)") & ~pl.col("work_id").is_in(read_works)
    ).row(0, named=True)
    error = write(
        setup,
        {
            "pins": [
                {"name": "too-early", "book_id": volumes[2], "slot": 1},  # #1 and #2 unread
                {"name": "edition", "book_id": spanish["book_id"], "slot": 2},
            ]
        },
    )
    assert error is None, error
    body = listed(setup, str(user), 50)
    got = ids(body)
    assert volumes[2] not in got  # a pin waits for the series' earlier volumes too
    assert "pin:too-early" not in body["metadata"]["rules"]
    assert got[1] == spanish["book_id"]
    assert [b for b in got if work[b] == spanish["work_id"]] == [spanish["book_id"]]
    assert len(got) == len(set(got)) == 50
    assert (
        write(
            setup,
            {
                "pins": [
                    {"name": "a", "book_id": "b1", "slot": 1},
                    {"name": "b", "book_id": "b1", "slot": 2},
                ]
            },
        )
        is not None
    )
    assert write(setup, {"expires": {"b1": "2030-01-01T00:00:00"}}) is not None  # no zone
