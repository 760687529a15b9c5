"""Book sense on a ranked list: one edition per work, nothing the reader read in another
edition, and series in reading order.

Every list the personalised path builds (two-stage, retrieval-only, the popularity fallback and
its top-up) walks its ranked books through :meth:`ReadingOrder.pick`:

- a book whose work the reader has read (any edition) is skipped;
- a book whose work is already in the list is skipped (the better-ranked edition stays);
- a volume of a series is never proposed while an earlier volume is unread and could be
  proposed (listed, allowed by the request's filters, not excluded): the earliest such
  volume takes its place (with its score), or the book is skipped when that volume is
  already listed.

Each book picked carries a note for its reason: ``series_next`` (the earliest unread volume of a
series the reader has started), ``series_start`` (a series' first open volume put in place of a
later one), or None (the model's reason stands).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from recsys.data.works import Works

SERIES_NEXT, SERIES_START = "series_next", "series_start"


@dataclass(frozen=True)
class Pick:
    book: int
    score: float
    note: str | None = None  # SERIES_NEXT, SERIES_START or None
    replaced: int | None = None  # the later volume this one stands in for
    reason: str | None = None  # a business rule's words (a pin), else the list's own


class ReadingOrder:
    """Applies works and series to ranked books (see the module docstring).

    Args:
        works: works and series by book index (the live catalogue's).
    """

    def __init__(self, works: Works) -> None:
        self.works = works

    def pick(
        self,
        ranked: Iterable[tuple[int, float]],
        history: Iterable[int],
        offerable: Callable[[int], bool],
        limit: int,
        taken: Iterable[int] = (),
        in_order: bool = True,
    ) -> list[Pick]:
        """The first ``limit`` books of :meth:`walk`."""
        return list(itertools.islice(self.walk(ranked, history, offerable, taken, in_order), limit))

    def walk(
        self,
        ranked: Iterable[tuple[int, float]],
        history: Iterable[int],
        offerable: Callable[[int], bool],
        taken: Iterable[int] = (),
        in_order: bool = True,
    ) -> Iterator[Pick]:
        """The books of ``ranked`` (already filtered: listed, allowed, not excluded) that
        respect works and series, lazily, best first.

        Args:
            ranked: (book, score), best first.
            history: the reader's books.
            offerable: whether a book could be proposed to this reader now (a stand-in
                volume must pass it).
            taken: books already in the list (a top-up after the model's books).
            in_order: apply series order (False: works only, for lists not made for a
                reader).
        """
        works = self.works
        size = len(works)
        history = list(history)
        read = works.works_read(history)
        started = {works.series_of(b) for b in history if 0 <= b < size} - {-1}
        listed = {works.work_of(b) for b in taken if 0 <= b < size}
        first_open: dict[int, int | None] = {}
        for book, score in ranked:
            if not 0 <= book < size:  # a book newer than the works table: no rules known
                yield Pick(book, score)
                continue
            work = works.work_of(book)
            if work in read or work in listed:
                continue
            series = works.series_of(book) if in_order else -1
            if series < 0:
                listed.add(work)
                yield Pick(book, score)
                continue
            if series not in first_open:
                first_open[series] = works.first_open_volume(series, read, offerable)
            first = first_open[series]
            note = None
            replaced = None
            if first is not None and works.position_of(first) < works.position_of(book):
                replaced, book = book, first
                work = works.work_of(book)
                if work in listed:
                    continue
                note = SERIES_NEXT if series in started else SERIES_START
            elif series in started:  # the book is the series' first open volume
                note = SERIES_NEXT
            listed.add(work)
            yield Pick(book, score, note, replaced)

    def waits(self, book: int, read: set[int], offerable: Callable[[int], bool]) -> int | None:
        """The earlier volume ``book`` waits for (unread, per the works in ``read``, and
        ``offerable``), or None when it keeps its series in order (or is in none)."""
        works = self.works
        if not 0 <= book < len(works) or works.series_of(book) < 0:
            return None
        first = works.first_open_volume(works.series_of(book), read, offerable)
        if first is None or works.position_of(first) >= works.position_of(book):
            return None
        return first

    def reason(self, pick: Pick, history: Iterable[int]) -> str | None:
        """The words of a series note; None for no note."""
        if pick.note is None:
            return None
        works = self.works
        series = works.series_of(pick.book)
        name = works.series_names[series]
        position = _number(works.position_of(pick.book))
        if pick.note == SERIES_START:
            return f"#{position} of {name}: the series starts here"
        before = [
            works.position_of(b)
            for b in history
            if 0 <= b < len(works) and works.series_of(b) == series
        ]
        read = [p for p in before if p < works.position_of(pick.book)]
        after = f" after #{_number(max(read))}" if read else ""
        return f"next in {name}{after}"


def _number(position: float) -> str:
    return str(int(position)) if float(position).is_integer() else f"{position:g}"
