"""Sustained mixed load against `recsys serve`: does the service stay personalised?

    python benchmarks/soak.py [--bundle artifacts/bundles/amazon_book] [--minutes 10]
        [--clients 8] [--stage-timeout-ms 100]

The probe behind issue #17 row 3: 8 clients for 10 minutes, 40 % user recommendations, 20 %
similar books, 15 % trending, 25 % events (each with its own event id), users drawn from the
bundle's known readers. Starts `recsys serve` (local runner, a SQLite store, auth and rate
limits off, the default stage budget) in a subprocess on loopback. Per minute: requests per
second, failures (any non-2xx and every transport error), the share of user answers that are
personal and the fallback reasons, and p50/p99 of user recommendations; the ratio columns
compare each minute with the first one of the same run. Then every acknowledged event is
looked up in the store (lost acknowledgements). Prints a table, writes
benchmarks/results/soak.json.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import random
import sqlite3
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from recsys.bundle.reader import load_bundle
from recsys.report import print_table, write_json
from recsys.serving.local import spawn_server

MIX = (("user", 40), ("similar", 20), ("trending", 15), ("event", 25))


class Minute:
    """What one minute of the load saw."""

    def __init__(self) -> None:
        self.requests = self.failures = 0
        self.sources: collections.Counter[str] = collections.Counter()
        self.user_ms: list[float] = []
        self.failed: collections.Counter[str] = collections.Counter()

    def row(self, seconds: float) -> dict[str, Any]:
        users = sum(self.sources.values())
        ms = np.asarray(self.user_ms) if self.user_ms else np.zeros(1)
        return {
            "rps": self.requests / seconds,
            "failed": self.failures,
            "personal_share": self.sources["personalized"] / users if users else 0.0,
            "user_p50_ms": float(np.percentile(ms, 50)),
            "user_p99_ms": float(np.percentile(ms, 99)),
            "fallbacks": dict((k, v) for k, v in self.sources.items() if k != "personalized"),
            "failures": dict(self.failed),
        }


async def soak(
    base: str, users: list[str], books: list[str], minutes: int, clients: int
) -> tuple[list[Minute], set[tuple[str, str]]]:
    rng = random.Random(0)
    kinds = [k for k, w in MIX for _ in range(w)]
    per_minute = [Minute() for _ in range(minutes)]
    acknowledged: set[tuple[str, str]] = set()
    start = time.perf_counter()
    end = start + minutes * 60

    async def call(client: httpx.AsyncClient, kind: str) -> tuple[httpx.Response, dict | None]:
        user = rng.choice(users)
        if kind == "user":
            return await client.post(f"/recommendations/users/{user}", json={"limit": 10}), None
        if kind == "similar":
            book = rng.choice(books)
            return await client.post(f"/recommendations/books/{book}", json={"limit": 10}), None
        if kind == "trending":
            return await client.get("/recommendations/trending", params={"limit": 10}), None
        event = {"user_id": user, "book_id": rng.choice(books), "type": "read"}
        event["event_id"] = uuid.uuid4().hex
        return await client.post("/events", json=event), event

    async def worker(client: httpx.AsyncClient) -> None:
        while (now := time.perf_counter()) < end:
            minute = per_minute[min(int((now - start) // 60), minutes - 1)]
            kind = rng.choice(kinds)
            started = time.perf_counter()
            minute.requests += 1
            try:
                response, event = await call(client, kind)
            except httpx.HTTPError as exc:
                minute.failures += 1
                minute.failed[f"transport:{type(exc).__name__}"] += 1
                continue
            if not response.is_success:
                minute.failures += 1
                minute.failed[str(response.status_code)] += 1
                continue
            if event is not None:
                acknowledged.add((event["user_id"], event["event_id"]))
            if kind == "user":
                minute.user_ms.append((time.perf_counter() - started) * 1000)
                meta = response.json()["metadata"]
                minute.sources[meta["fallback_reason"] or meta["source"]] += 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=10, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(clients)))
    return per_minute, acknowledged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", default="artifacts/bundles/amazon_book")
    parser.add_argument("--minutes", type=int, default=10)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--stage-timeout-ms", type=int, default=None, help="default: serve's")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()

    bundle = load_bundle(args.bundle)
    users = [str(u) for u in bundle.known_histories.get_column("user_id").to_list()]
    books = [str(b) for b in bundle.books.get_column("book_id").to_list()]
    folder = Path(tempfile.mkdtemp(prefix="recsys-soak-"))
    store = folder / "store.db"
    overrides = [
        f"bundle={bundle.path}",
        f"store.url=sqlite:///{store}",
        "auth.enabled=false",
        "rate_limits.enabled=false",
    ]
    if args.stage_timeout_ms is not None:
        overrides.append(f"stage_timeout_ms={args.stage_timeout_ms}")
    server, base = spawn_server(overrides, {"OMP_NUM_THREADS": "1", "RECSYS_ROOT": str(folder)})
    try:
        per_minute, acknowledged = asyncio.run(soak(base, users, books, args.minutes, args.clients))
    finally:
        server.terminate()
        server.wait(timeout=60)
    with sqlite3.connect(store) as conn:
        stored = {(str(u), str(e)) for u, e in conn.execute("SELECT user_id, event_id FROM events")}
    rows = {f"minute {i + 1}": m.row(60.0) for i, m in enumerate(per_minute)}
    first = rows["minute 1"]
    for row in rows.values():
        row["rps_vs_minute_1"] = row["rps"] / first["rps"] if first["rps"] else 0.0
        row["p50_vs_minute_1"] = row["user_p50_ms"] / first["user_p50_ms"]
    lost = len(acknowledged - stored)
    columns = ["rps", "rps_vs_minute_1", "failed", "personal_share", "user_p50_ms",
               "p50_vs_minute_1", "user_p99_ms", "fallbacks"]  # fmt: skip
    print_table(rows, columns, title=f"soak: {args.clients} clients, {args.minutes} min")
    total = {
        "requests": sum(m.requests for m in per_minute),
        "failed": sum(m.failures for m in per_minute),
        "acknowledged_events": len(acknowledged),
        "lost_acknowledgements": lost,
        "personal_share": float(
            sum(m.sources["personalized"] for m in per_minute)
            / max(1, sum(sum(m.sources.values()) for m in per_minute))
        ),
    }
    print(total)
    payload = {"bundle": bundle.path.name, "args": vars(args), "minutes": rows, "total": total}
    print(f"written {write_json(Path(args.out) / 'soak.json', payload)}")


if __name__ == "__main__":
    main()
