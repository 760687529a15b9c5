"""Batch scoring throughput: every Amazon-Book user, top-100, two-stage.

    python benchmarks/batch.py [--bundle artifacts/bundles/amazon_book] [--k 100]
        [--executors local,ray] [--users N]

Runs `recsys batch-score` in a subprocess per executor (in-process, and Ray Data with a
local cluster) on the same users, and reports users/s, wall time, peak memory of the whole
process tree (sampled every 0.2 s) and the ratio to the in-process run. Bar: all 70,679 users
in <= 3 minutes in-process on 2 cores. Prints a table, writes benchmarks/results/batch.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl

from recsys.bundle.reader import load_bundle
from recsys.report import print_table, write_json


def tree_rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` and all its descendants (from /proc), MiB."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            statm = (entry / "statm").read_text().split()
        except OSError:
            continue
        child = int(entry.name)
        children.setdefault(int(fields[1]), []).append(child)
        rss[child] = int(statm[1]) * os.sysconf("SC_PAGE_SIZE")
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        total += rss.get(current, 0)
        stack += children.get(current, [])
    return total / 2**20


def measured(
    command: list[str],
    env: dict[str, str],
    cwd: Path | None = None,
    enter: Callable[[], None] | None = None,
) -> tuple[int, str, float, float]:
    """Run ``command``; its exit status, output, wall seconds and the peak resident memory of
    its process tree (MiB, sampled every 0.2 s). ``enter`` runs in the child before it starts."""
    started = time.perf_counter()
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=cwd,
        preexec_fn=enter,
    )
    peak = 0.0
    while process.poll() is None:
        peak = max(peak, tree_rss_mib(process.pid))
        time.sleep(0.2)
    wall = time.perf_counter() - started
    output = process.stdout.read().decode() if process.stdout else ""
    return process.returncode, output, wall, peak


def run(executor: str, bundle: str, users: str, k: int, out: Path) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "recsys",
        "batch-score",
        f"bundle={bundle}",
        f"users={users}",
        f"k={k}",
        f"out={out}",
        f"executor={executor}",
        "progress=false",
    ]
    status, output, wall, peak = measured(command, env)
    if status != 0:
        raise RuntimeError(f"batch-score {executor} failed:\n{output[-3000:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    return {
        "users": manifest["users_scored"],
        "rows": manifest["rows"],
        "scoring_s": manifest["seconds"],
        "wall_s": round(wall, 1),
        "users_per_s": manifest["users_scored"] / manifest["seconds"],
        "peak_rss_mib": round(peak),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bundle", default="artifacts/bundles/amazon_book")
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--executors", default="local,ray")
    parser.add_argument("--users", type=int, default=0, help="first N users only (0 = all)")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    bundle = load_bundle(args.bundle)
    scratch = Path(tempfile.mkdtemp(prefix="recsys-batch-"))
    users = "all"
    if args.users:
        ids = bundle.known_histories.get_column("user_id")[: args.users]
        users = str(scratch / "users.parquet")
        pl.DataFrame({"user_id": ids}).write_parquet(users)
    rows: dict[str, dict[str, Any]] = {}
    try:
        for executor in args.executors.split(","):
            rows[executor] = run(executor, args.bundle, users, args.k, scratch / executor)
            print(executor, rows[executor], flush=True)
        if {"local", "ray"} <= rows.keys():
            same = pl.read_parquet(scratch / "local" / "part-*.parquet").equals(
                pl.read_parquet(scratch / "ray" / "part-*.parquet")
            )
            rows["ray"]["identical_to_local"] = same
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    base = rows.get("local", next(iter(rows.values())))
    for row in rows.values():
        row["speed_vs_local"] = round(row["users_per_s"] / base["users_per_s"], 2)
    print_table(rows, title=f"batch-score {bundle.version}, top-{args.k}, 2 cores")
    bar = {}
    if "local" in rows:
        minutes = bundle.known_histories.height / rows["local"]["users_per_s"] / 60
        bar = {
            "all_users": bundle.known_histories.height,
            "projected_minutes_in_process": round(minutes, 2),
            "bar_met": minutes <= 3,
        }
        print_table({"bar (all users <= 3 min in-process)": bar})
    path = write_json(Path(args.out) / "batch.json", {"rows": rows, "bar": bar})
    print(f"written {path}")


if __name__ == "__main__":
    main()
