"""Coordinate search over ordered settings that proves it bracketed the optimum.

A baseline is only a baseline at full strength: its best setting must be shown to lie inside
the values tried, not at the edge of a grid. :func:`bracket_search` moves one setting at a
time to a neighbouring value while the score improves, until every setting's best value has
been compared with both of its neighbours; a best value at the end of its list is reported as
unbracketed (widen that list).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Settings = dict[str, Any]


@dataclass
class Search:
    """What a search tried and found.

    Attributes:
        best: the best settings.
        best_score: their score.
        trials: every settings tried with its score, in order.
        unbracketed: settings whose best value is an end of its list (the optimum may lie
            beyond it), or that the trial budget left without both neighbours compared.
        exhausted: the trial budget ran out before the search could stop on its own.
    """

    best: Settings
    best_score: float
    trials: list[Settings] = field(default_factory=list)
    unbracketed: list[str] = field(default_factory=list)
    exhausted: bool = False


def bracket_search(
    score: Callable[[Settings], float],
    grid: Mapping[str, Sequence[Any]],
    start: Mapping[str, Any],
    max_trials: int = 40,
) -> Search:
    """Maximise ``score`` over ``grid`` (each setting's values in order), from ``start``.

    Each round tries both neighbours of the current value of every setting; the search moves
    to the best improvement and stops when no neighbour improves (or after ``max_trials``
    distinct settings). ``score`` is called once per distinct setting.
    """
    for name, value in start.items():
        if value not in grid[name]:
            raise ValueError(f"start {name}={value!r} is not among {list(grid[name])}")
    cache: dict[tuple[Any, ...], float] = {}
    trials: list[Settings] = []

    def run(settings: Settings) -> float | None:
        """The settings' score (cached); None once the trial budget is spent."""
        key = tuple(settings[name] for name in grid)
        if key not in cache:
            if len(cache) >= max_trials:
                return None
            cache[key] = score(settings)
            trials.append({**settings, "score": cache[key]})
        return cache[key]

    current = {name: start[name] for name in grid}
    first = run(current)
    assert first is not None
    best_score = first
    while True:
        better: list[tuple[float, Settings]] = []
        unchecked: set[str] = set()
        for name, values in grid.items():
            position = list(values).index(current[name])
            for step in (-1, 1):
                if 0 <= position + step < len(values):
                    move = {**current, name: values[position + step]}
                    value = run(move)
                    if value is None:
                        unchecked.add(name)
                    elif value > best_score:
                        better.append((value, move))
        if not better:
            break
        best_score, current = max(better, key=lambda pair: pair[0])
    at_edge = {
        name
        for name, values in grid.items()
        if len(values) > 1 and current[name] in (values[0], values[-1])
    }
    unbracketed = [name for name in grid if name in at_edge | unchecked]
    return Search(current, best_score, trials, unbracketed, exhausted=bool(unchecked))
