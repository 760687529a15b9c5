"""KnownHistories reads one user's history per request and equals the dict it replaced."""

from __future__ import annotations

import polars as pl

from recsys.serving.histories import KnownHistories


def test_known_histories_equal_the_dict_of_rows() -> None:
    frame = pl.DataFrame(
        {"user_id": ["a", "b", "c"], "history": [["x", "y"], [], ["z", "x", "z"]]},
        schema={"user_id": pl.String, "history": pl.List(pl.String)},
    )
    histories = KnownHistories(frame)
    assert dict(histories) == dict(frame.iter_rows())
    assert histories.get("c", []) == ["z", "x", "z"]
    assert "b" in histories
    assert "nobody" not in histories
    assert histories.get("nobody", []) == []
    histories["a"].append("w")  # every read is a fresh list: the bundle's stays as it was
    assert histories["a"] == ["x", "y"]
