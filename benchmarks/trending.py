"""Trending with a full store: GET /recommendations/trending latency with N recent events in
the store, against an empty store in the same run (the ratio is the figure).

    python benchmarks/trending.py [--bundle artifacts/bundles/synthetic] [--events 66000]

In process (the service, no HTTP), SQLite store, trending rebuilt from the store every
`--refresh-s` (0.5 s: far more often than the default 10 s, so rebuilds are in the figures).
Prints a table, writes benchmarks/results/trending.json.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from recsys.bundle.reader import load_bundle
from recsys.report import print_table, write_json
from recsys.serving.live import Live
from recsys.serving.service import RecommendationService
from recsys.serving.trending import Trending
from recsys.stores import open_store
from recsys.stores.schema import Event


def measure(bundle: Any, n_events: int, seconds: float, refresh_s: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        stores = open_store(f"sqlite:///{Path(tmp) / 'store.db'}")
        rng = random.Random(0)
        books = [str(b) for b in bundle.books.get_column("book_id").to_list()]
        now = time.time()
        kinds = ["view", "read", "rate", "want_to_read"]
        for start in range(0, n_events, 5000):
            batch = [
                Event(
                    f"u{rng.randrange(5000)}",
                    rng.choice(books),
                    rng.choice(kinds),
                    now - rng.uniform(0, 6 * 86400),
                )
                for _ in range(min(5000, n_events - start))
            ]
            stores.events.append(batch)
        live = Live(stores=stores, trending=Trending(), refresh_s=refresh_s)
        live.refresh_trending(force=True)
        service = RecommendationService(bundle, 10.0, live=live)
        latencies = []
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            service.trending(10)
            latencies.append(time.perf_counter() - started)
        live.close()
    ms = np.asarray(latencies) * 1000
    return {
        "events": n_events,
        "calls": len(latencies),
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", default="artifacts/bundles/synthetic")
    parser.add_argument("--events", type=int, default=66_000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--refresh-s", type=float, default=0.5)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    bundle = load_bundle(args.bundle)
    rows = {
        f"{n:,} events": measure(bundle, n, args.seconds, args.refresh_s) for n in (0, args.events)
    }
    empty = rows["0 events"]
    for row in rows.values():
        row["mean_vs_empty"] = row["mean_ms"] / empty["mean_ms"]
        row["p99_vs_empty"] = row["p99_ms"] / empty["p99_ms"]
    print_table(rows, title=f"trending, {bundle.version}, rebuild every {args.refresh_s} s")
    print(f"wrote {write_json(Path(args.out) / 'trending.json', {'rows': rows})}")


if __name__ == "__main__":
    main()
