"""The bundle's known histories as serving reads them: one user's book ids per request."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import polars as pl


class KnownHistories(Mapping[str, list[str]]):
    """User id -> book ids known at training time (oldest first), from a bundle's
    ``(user_id, history)`` frame.

    The lists stay in the frame's list column and become Python lists one user at a time, when
    a request reads them: turning every history into Python objects when a bundle loads (650k
    strings for Amazon-Book, in polars calls that hold the GIL for 0.2-0.8 s at a time) stalled
    every request in flight during a hot swap. Only the user ids become a dict.
    """

    def __init__(self, frame: pl.DataFrame) -> None:
        self._histories = frame.get_column("history")
        ids = frame.get_column("user_id").to_list()
        self._rows = dict(zip(ids, range(len(ids)), strict=True))

    def __getitem__(self, user_id: str) -> list[str]:
        history = self._histories[self._rows[user_id]]
        return [] if history is None else list(history.to_list())

    def __contains__(self, user_id: object) -> bool:
        return user_id in self._rows

    def __iter__(self) -> Iterator[str]:
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)
