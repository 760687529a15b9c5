"""Events ingested while serving, and what the response cache saves.

    python benchmarks/live.py [--bundle artifacts/bundles/amazon_book] [--seconds 6]

Against `recsys serve` (local runner) in a subprocess with a fresh SQLite store:

1. events/s (one event per POST /events, 4 clients) alone, then while 4 other clients ask
   for user recommendations, next to recommendations alone: ratios in the same run.
2. user recommendations on a cache miss (a user asked for the first time), an in-process
   level-1 hit, and a Redis level-2 hit (a server with a real redis-server and level 1 off):
   p50/p99 latency over HTTP.

Prints tables, writes benchmarks/results/live.json.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from recsys.bundle.reader import load_bundle
from recsys.report import print_table, write_json
from recsys.serving.local import free_port, spawn_server

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import load


def start_server(bundle: str, store: Path, extra: list[str]) -> tuple[subprocess.Popen[bytes], str]:
    overrides = [
        f"bundle={bundle}",
        f"store.url=sqlite:///{store}",
        "stage_timeout_ms=1000",
        "auth.enabled=false",  # what is measured here is the store and the cache
        "rate_limits.enabled=false",
        *extra,
    ]
    return spawn_server(overrides, {"OMP_NUM_THREADS": "1"})


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    process.wait(timeout=60)


async def mixed(base: str, events: Any, recs: Any, seconds: float) -> dict[str, dict[str, float]]:
    event_run, rec_run = await asyncio.gather(
        load(base, events, 4, seconds), load(base, recs, 4, seconds)
    )
    return {"events": event_run, "recs": rec_run}


def timed_requests(base: str, calls: list[tuple[str, dict[str, Any]]]) -> list[float]:
    out = []
    with httpx.Client(base_url=base, timeout=30) as client:
        for path, body in calls:
            started = time.perf_counter()
            response = client.post(path, json=body)
            out.append(time.perf_counter() - started)
            assert response.status_code == 200, response.text
    return out


def latency_row(latencies: list[float], cache: str) -> dict[str, Any]:
    ms = np.asarray(latencies) * 1000
    return {
        "cache": cache,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "requests": len(ms),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bundle", default="artifacts/bundles/amazon_book")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--users", type=int, default=400, help="users in the cache test")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    bundle = load_bundle(args.bundle)
    rng = random.Random(0)
    users = bundle.known_histories.get_column("user_id").to_list()
    books = bundle.state.books.ids.to_list()
    counter = itertools.count()

    def event() -> tuple[str, str, dict[str, Any]]:
        n = next(counter)
        body = {"user_id": f"bench-{n % 5000}", "book_id": rng.choice(books), "type": "read"}
        return "POST", "/events", body

    def rec() -> tuple[str, str, dict[str, Any]]:
        # distinct limits per call keep the cache out of this measurement
        limit = rng.randint(1, 50)
        return "POST", f"/recommendations/users/{rng.choice(users)}", {"limit": limit}

    scratch = Path(tempfile.mkdtemp(prefix="recsys-live-"))
    rows: dict[str, dict[str, Any]] = {}
    try:
        process, base = start_server(args.bundle, scratch / "a.db", ["cache.enabled=false"])
        try:
            asyncio.run(load(base, rec, 2, 2.0))  # warm-up
            rows["events alone"] = asyncio.run(load(base, event, 4, args.seconds))
            rows["recs alone"] = asyncio.run(load(base, rec, 4, args.seconds))
            both = asyncio.run(mixed(base, event, rec, args.seconds))
            rows["events while serving"] = both["events"]
            rows["recs while ingesting"] = both["recs"]
        finally:
            stop(process)
        rows["events while serving"]["ratio_vs_alone"] = (
            rows["events while serving"]["rps"] / rows["events alone"]["rps"]
        )
        rows["recs while ingesting"]["ratio_vs_alone"] = (
            rows["recs while ingesting"]["rps"] / rows["recs alone"]["rps"]
        )
        print_table(
            rows,
            ["rps", "p50_ms", "p99_ms", "requests", "errors", "ratio_vs_alone"],
            title="events ingested (SQLite WAL, synchronous=FULL) while serving, 4+4 clients",
        )

        sample = rng.sample(users, args.users)
        calls = [(f"/recommendations/users/{u}", {"limit": 10}) for u in sample]
        cache_rows: dict[str, dict[str, Any]] = {}
        process, base = start_server(args.bundle, scratch / "b.db", [])
        try:
            timed_requests(base, calls[:20])  # warm-up (these users are then cached)
            cache_rows["miss"] = latency_row(timed_requests(base, calls[20:]), "miss")
            cache_rows["level 1 hit"] = latency_row(timed_requests(base, calls[20:]), "l1")
        finally:
            stop(process)
        redis_server = shutil.which("redis-server")
        if redis_server:
            port = free_port()
            redis = subprocess.Popen(
                [redis_server, "--port", str(port), "--bind", "127.0.0.1", "--save", ""],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(0.5)
            extra = [f"cache.redis_url=redis://127.0.0.1:{port}/0", "cache.l1_ttl_s=0"]
            process, base = start_server(args.bundle, scratch / "c.db", extra)
            try:
                timed_requests(base, calls[:20])
                timed_requests(base, calls[20:])  # fills Redis
                cache_rows["level 2 hit (redis)"] = latency_row(
                    timed_requests(base, calls[20:]), "l2"
                )
            finally:
                stop(process)
                redis.terminate()
        miss = cache_rows["miss"]["p50_ms"]
        for row in cache_rows.values():
            row["p50_vs_miss"] = row["p50_ms"] / miss
        print_table(cache_rows, title="user recommendations over HTTP, one client")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    path = write_json(Path(args.out) / "live.json", {"events": rows, "cache": cache_rows})
    print(f"written {path}")


if __name__ == "__main__":
    main()
