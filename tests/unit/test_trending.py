"""Trending scores: the vectorised rebuild equals event-by-event adds, the kept top follows
every event exactly, and a due rebuild never holds a request."""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from recsys.serving.live import Live
from recsys.serving.trending import Trending
from recsys.stores import open_store
from recsys.stores.schema import Event


def test_rebuild_equals_adding_each_event() -> None:
    rng = random.Random(0)
    now = time.time()
    kinds = ["view", "read", "rate", "purchase", "unknown"]
    events = [
        (f"b{rng.randrange(300)}", rng.choice(kinds), now - rng.uniform(0, 9 * 86400))
        for _ in range(5000)
    ]
    built = Trending(half_life_s=3600, window_s=7 * 86400)
    built.rebuild(events, now)
    added = Trending(half_life_s=3600, window_s=7 * 86400)
    for book, kind, ts in events:
        added.add(book, kind, ts, now)
    got, want = dict(built.top(300, now)), dict(added.top(300, now))
    assert got.keys() == want.keys()
    assert all(got[b] == pytest.approx(want[b], rel=1e-9) for b in want)
    assert [b for b, _ in built.top(10, now)] == [b for b, _ in added.top(10, now)]


def test_top_follows_every_event_exactly() -> None:
    """The kept top, updated event by event, equals sorting every score, at every step (a
    non-positive weight makes it recompute)."""
    rng = random.Random(1)
    now = time.time()
    weights = {"read": 1.0, "view": 0.2, "dismiss": -0.5}
    trending = Trending(half_life_s=3600, window_s=86400, weights=weights)
    for step in range(3000):
        kind = rng.choice(["read", "view", "view", "dismiss"] if step > 1500 else ["read", "view"])
        trending.add(f"b{rng.randrange(400)}", kind, now - rng.uniform(0, 7200), now)
        if step % 100 == 0 or step > 2900:
            everything = sorted(trending._scores.items(), key=lambda kv: (-kv[1], kv[0]))
            scale = 2.0 ** ((trending._ref - now) / 3600)
            want = [(b, v * scale) for b, v in everything[:20] if v * scale > 0]
            got = trending.top(20, now)
            assert [b for b, _ in got] == [b for b, _ in want], step
    assert dict(trending.top(5, now + 3600)) == pytest.approx(
        {b: v / 2 for b, v in trending.top(5, now)}
    )


@dataclasses.dataclass
class SlowEvents:
    """The real event store, whose scan for trending waits until released."""

    inner: object
    release: threading.Event

    def recent(self, since: float) -> Iterator[tuple[str, str, float]]:
        self.release.wait(10)
        yield from self.inner.recent(since)  # type: ignore[attr-defined]


def test_a_due_rebuild_runs_in_the_background(tmp_path: Path) -> None:
    stores = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    now = time.time()
    stores.events.append([Event("u1", "b1", "read", now)])
    release = threading.Event()
    slow = dataclasses.replace(stores, events=SlowEvents(stores.events, release))
    live = Live(stores=slow, trending=Trending(), refresh_s=0.0)
    started = time.perf_counter()
    live.refresh_trending()  # due: starts the rebuild, does not wait for it
    live.refresh_trending()  # one rebuild at a time
    assert time.perf_counter() - started < 1.0
    assert live.trending is not None
    assert live.trending.top(5) == []
    release.set()
    deadline = time.monotonic() + 10
    while not live.trending.top(5):
        assert time.monotonic() < deadline, "the background rebuild never landed"
        time.sleep(0.05)
    assert live.trending.top(5)[0][0] == "b1"
    live.close()
