"""User recommendations from one `recsys serve` process against several, same total load.

    python benchmarks/processes.py [--bundle artifacts/bundles/amazon_book] [--processes 1,2]
        [--clients 8] [--seconds 15]

For each count N, starts N local-runner servers (auth, rate limits and cache off, each its
own SQLite store) and drives them together with `--clients` clients split evenly (the load of
benchmarks/serving.py, transport errors counted): total RPS, each server's p99, errors, and
the RPS ratio to the first count of the same run. What a multi-process local runner could
gain on this machine, where one process's Python (its model thread and its event loop) shares
one interpreter lock. Prints a table, writes benchmarks/results/processes.json.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serving import OPEN, load

from recsys.bundle.reader import load_bundle
from recsys.report import print_table, write_json
from recsys.serving.local import spawn_server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", default="artifacts/bundles/amazon_book")
    parser.add_argument("--processes", default="1,2")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    bundle = load_bundle(args.bundle)
    users = bundle.histories.get_column("user_id").to_list()
    rng = random.Random(0)

    def make() -> tuple[str, str, dict[str, Any]]:
        return "POST", f"/recommendations/users/{rng.choice(users)}", {"limit": 10}

    rows: dict[str, dict[str, Any]] = {}
    folder = Path(tempfile.mkdtemp(prefix="recsys-processes-"))
    for n in (int(p) for p in args.processes.split(",")):
        overrides = [f"bundle={bundle.path}", "engine=local", *OPEN, "stage_timeout_ms=1000"]
        servers = [
            spawn_server(
                [*overrides, f"store.url=sqlite:///{folder}/{n}-{i}.db"], {"OMP_NUM_THREADS": "1"}
            )
            for i in range(n)
        ]

        async def run(bases: list[str]) -> list[dict[str, float]]:
            for base in bases:
                await load(base, make, 2, 2.0)  # warm-up
            share = args.clients // len(bases)
            return list(await asyncio.gather(*(load(b, make, share, args.seconds) for b in bases)))

        try:
            results = asyncio.run(run([base for _, base in servers]))
        finally:
            for process, _ in servers:
                process.terminate()
                process.wait(timeout=60)
        rows[f"{n} process(es)"] = {
            "rps": sum(r["rps"] for r in results),
            "p99_ms_max": max(r["p99_ms"] for r in results),
            "errors": sum(r["errors"] for r in results),
        }
    first = next(iter(rows.values()))["rps"]
    for row in rows.values():
        row["rps_vs_first"] = row["rps"] / first
    print_table(rows, title=f"user recommendations, {args.clients} clients, {bundle.version}")
    print(f"written {write_json(Path(args.out) / 'processes.json', {'rows': rows})}")


if __name__ == "__main__":
    main()
