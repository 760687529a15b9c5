"""Requests during a hot swap: user-recommendation latency while `recsys serve` loads a new
bundle, against the steady state measured in the same run (the ratios are the figures).

    python benchmarks/swap.py [--bundle artifacts/bundles/amazon_book] [--clients 4]
        [--steady-s 6] [--swaps 2]

Starts `recsys serve` (local runner, product defaults but auth and rate limits off, stage
budget 10 s so a stall shows as latency, not as popularity fallbacks) in a subprocess with a
watched experiments file, and drives it with client threads sending
``POST /recommendations/users/<known user>``. Each swap writes ``default_bundle`` to the other
version (the first time a genuinely different model: the bundle with its ranker reversed,
written next to it once, `tests/helpers/bundles.py`), and back. The swap window runs from the
file write until one second after the first response naming the new version; the steady
window is the ``--steady-s`` before the write. Per window: p50, p99 and max latency and the
longest gap between two completed requests (all clients together). Prints a table, writes
benchmarks/results/swap.json.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml

from recsys.bundle.reader import load_bundle, resolve
from recsys.report import print_table, write_json
from recsys.serving.local import spawn_server

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.helpers: the other model
from tests.helpers.bundles import reversed_ranker

AFTER_S = 1.0  # the swap window ends this long after the first answer of the new version
# the product defaults, less auth and rate limits (nothing to measure here); a budget long
# enough that a stalled request is seen as latency rather than answered from popularity
SERVE = [
    "engine=local",
    "auth.enabled=false",
    "rate_limits.enabled=false",
    "stage_timeout_ms=10000",
]

Done = tuple[float, float, str]  # (started, finished, bundle version or an error)


class Clients:
    """Client threads sending user recommendations until stopped; every request recorded."""

    def __init__(self, base: str, users: list[str], n: int) -> None:
        self.base, self.users = base, users
        self.done: list[Done] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(n)]

    def _run(self, seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=self.base, timeout=60) as client:
            while not self._stop.is_set():
                started = time.perf_counter()
                try:
                    r = client.post(
                        f"/recommendations/users/{rng.choice(self.users)}", json={"limit": 10}
                    )
                    meta = r.json()["metadata"] if r.status_code == 200 else {}
                    outcome = meta.get("bundle_version") or f"status {r.status_code}"
                    if meta.get("fallback_reason") in ("timeout", "stage_error", "overloaded"):
                        outcome = f"fallback {meta['fallback_reason']}"
                except httpx.HTTPError as exc:
                    outcome = f"transport {type(exc).__name__}"
                self.done.append((started, time.perf_counter(), outcome))

    def first(self, version: str, since: float) -> float | None:
        """When the first request started after ``since`` that answered from ``version``."""
        finished = [end for start, end, v in list(self.done) if v == version and start >= since]
        return min(finished) if finished else None

    def __enter__(self) -> Clients:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)


def window(done: list[Done], start: float, end: float) -> dict[str, float]:
    """Figures of the requests that finished in ``[start, end]``; the longest gap also counts
    the time from ``start`` to the first completion and from the last one to ``end``."""
    rows = sorted((e, e - s, v) for s, e, v in done if start <= e <= end)
    ms = np.asarray([lat for _, lat, _ in rows]) * 1000 if rows else np.zeros(1)
    ends = np.asarray([start, *(e for e, _, _ in rows), end])
    return {
        "requests": len(rows),
        "failed": sum(" " in v for _, _, v in rows),  # an error or a fallback, never a version
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "max_ms": float(ms.max()),
        "gap_ms": float(np.diff(ends).max() * 1000),
        "seconds": end - start,
    }


def swap_once(
    clients: Clients, file: Path, target: Path, steady_s: float, timeout_s: float = 120.0
) -> tuple[dict[str, float], dict[str, float], float]:
    """Steady state, then a swap to ``target``: (steady figures, swap figures, seconds from
    the file write to the first answer of the new version)."""
    time.sleep(steady_s)
    written = time.perf_counter()
    file.write_text(yaml.safe_dump({"default_bundle": str(target), "experiments": []}))
    while (switched := clients.first(target.name, written)) is None:
        if time.perf_counter() - written > timeout_s:
            raise RuntimeError(f"no answer from {target.name} {timeout_s:.0f} s after the write")
        time.sleep(0.05)
    time.sleep(AFTER_S + 0.5)  # requests finishing inside the window are all recorded
    done = list(clients.done)
    steady = window(done, written - steady_s, written)
    swap = window(done, written, switched + AFTER_S)
    return steady, swap, switched - written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", default="artifacts/bundles/amazon_book")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--steady-s", type=float, default=6.0)
    parser.add_argument("--swaps", type=int, default=2, help="alternating A -> B -> A ...")
    parser.add_argument("--poll-s", type=float, default=0.2, help="experiments file polling")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    first = resolve(args.bundle)
    second = reversed_ranker(first)
    users = [str(u) for u in load_bundle(first).histories.get_column("user_id").to_list()]
    rows: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "experiments.yaml"
        file.write_text("experiments: []\n")
        server, base = spawn_server(
            [
                f"bundle={first}",
                *SERVE,
                f"store.url=sqlite:///{Path(tmp) / 'store.db'}",
                f"experiments.file={file}",
                f"experiments.poll_s={args.poll_s}",
            ],
            {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")},
        )
        try:
            with Clients(base, users, args.clients) as clients:
                time.sleep(2.0)  # warm-up
                for i in range(args.swaps):
                    target = second if i % 2 == 0 else first
                    steady, swap, seconds = swap_once(clients, file, target, args.steady_s)
                    rows[f"swap {i + 1} steady"] = steady
                    rows[f"swap {i + 1} during"] = swap
                    rows[f"swap {i + 1} ratio"] = {
                        k: swap[k] / steady[k] for k in ("p50_ms", "p99_ms", "max_ms", "gap_ms")
                    } | {"seconds": seconds}
                    print(f"swap {i + 1} to {target.name}: {seconds:.2f} s", flush=True)
                outcomes: dict[str, int] = {}
                for _, _, v in clients.done:
                    outcomes[v] = outcomes.get(v, 0) + 1
        finally:
            server.terminate()
            server.wait(timeout=60)
    print_table(
        rows,
        ["requests", "failed", "p50_ms", "p99_ms", "max_ms", "gap_ms", "seconds"],
        title=(
            f"hot swap under {args.clients} clients, {first.name} <-> {second.name} "
            "(ratio rows: during / steady; seconds: write to first new answer)"
        ),
    )
    bad = {v: n for v, n in outcomes.items() if " " in v}
    print(f"answers by version or failure: {outcomes}")
    payload = {"rows": rows, "outcomes": outcomes, "failed": sum(bad.values())}
    print(f"written {write_json(Path(args.out) / 'swap.json', payload)}")


if __name__ == "__main__":
    main()
