"""Rules files: what is accepted, and what is refused with which message."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsys.serving.rules import Rules, RulesError, RulesHolder


def parse(raw: object, folder: Path = Path()) -> Rules:
    return Rules.parse(raw, folder, "r1")  # type: ignore[arg-type]


def test_an_empty_file_is_no_rules() -> None:
    assert parse({}).empty
    assert parse(None).empty


def test_ids_files_are_read_relative_to_the_rules_file(tmp_path: Path) -> None:
    (tmp_path / "stock.txt").write_text("b1\n\n b2 \n")
    rules = parse({"filters": {"s": {"book_ids_file": "stock.txt", "book_ids": ["b9"]}}}, tmp_path)
    assert rules.ids == {"s": {"b1", "b2", "b9"}}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"require": ["x"]}, r"unknown filter\(s\) \['x'\]"),
        ({"boosts": [{"name": "b", "filter": "x", "factor": 2}]}, r"unknown filter"),
        ({"filters": {"f": {"colour": "red"}}}, r"filters.f.colour: Extra inputs"),
        ({"filters": {"f": {}}, "boosts": [{"name": "b", "filter": "f", "factor": 0}]}, "factor"),
        (
            {"filters": {"f": {}}, "promotions": [{"name": "p", "filter": "f"}]},
            "exactly one of at_least, at_most",
        ),
        (
            {
                "filters": {"f": {}},
                "boosts": [{"name": "same", "filter": "f", "factor": 2}],
                "pins": [{"name": "same", "book_id": "b1", "slot": 1}],
            },
            r"used twice: \['same'\]",
        ),
        ({"pins": [{"name": "p", "book_id": "b1", "slot": 0}]}, "pins.0.slot"),
        ({"expires": {"b1": "next tuesday"}}, "expires.b1"),
    ],
)
def test_refusals_name_the_problem(raw: dict[str, object], message: str) -> None:
    with pytest.raises(RulesError, match=message):
        parse(raw)


def test_the_holder_keeps_its_rules_when_a_file_is_refused() -> None:
    holder = RulesHolder()
    holder.known = lambda book: book.startswith("b")
    holder.apply({"hidden": ["b1"]})
    first = holder.version
    assert first.startswith("r-")
    with pytest.raises(RulesError, match=r"unknown book id\(s\) \['x1'\]"):
        holder.apply({"hidden": ["x1"]})
    assert holder.rules.spec.hidden == ["b1"]
    assert holder.version == first
    other = RulesHolder()
    other.apply({"hidden": ["b1"]})
    assert other.version == first  # the content's name: the same in every process
    holder.apply({})
    assert holder.version == "none"
    assert holder.bound(object()) is None  # no rules: nothing to bind
