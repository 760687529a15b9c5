"""Retraining on Amazon-Book: wall time of `recsys retrain` with a few thousand stored events,
and the candidate-vs-production table.

    python benchmarks/retrain.py [--events-users 1000] [--per-user 3] [--minutes 1]
        [--root /tmp/retrain-bench] [--shared ../shared/data] [override ...]

Holds back the last ``--per-user`` interactions (file order) of ``--events-users`` random
users with at least 8, writes the rest as a copy of the dataset, and runs `recsys retrain` on
it with an empty store: its candidate becomes production. Then stores the held-back
interactions as `read` events (real reads, after production's cut-off) and runs `recsys
retrain` again, timed: candidate and production are scored on the same holdout and gated.
``--minutes`` is each retriever fit's `trainer.max_time` (the serving and the label
retriever). Prints both runs' tables, writes benchmarks/results/retrain.json.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from recsys.report import print_table, write_json
from recsys.runner import max_time
from recsys.stores import Event, open_store


def hold_back(source: Path, target: Path, users: int, per_user: int, seed: int) -> list[Event]:
    """Copy the KGAT files to ``target`` without the held-back reads; return them as events."""
    lines = gzip.decompress((source / "train.txt.gz").read_bytes()).decode().splitlines()
    rows = [line.split() for line in lines if line.strip()]
    rng = np.random.default_rng(seed)
    eligible = [i for i, row in enumerate(rows) if len(row) - 1 >= 8]
    picked = set(rng.choice(eligible, users, replace=False).tolist())
    events = []
    for i in sorted(picked):
        user, books = rows[i][0], rows[i][1:]
        rows[i] = [user, *books[:-per_user]]
        events += [Event(user, book, "read", 0.0) for book in books[-per_user:]]
    target.mkdir(parents=True, exist_ok=True)
    (target / "train.txt").write_text("\n".join(" ".join(r) for r in rows) + "\n")
    for name in ("item_list.txt.gz", "user_list.txt.gz"):
        if (source / name).is_file():
            shutil.copy2(source / name, target / name)
    return events


def retrain(root: Path, data: Path, minutes: float, extra: list[str]) -> dict[str, Any]:
    """One `recsys retrain` in a subprocess: its wall time and report."""
    command = [
        sys.executable,
        "-m",
        "recsys",
        "retrain",
        "experiment=amazon_book",
        "fit=carve",  # time-boxed fits (--minutes), as this benchmark has always measured
        f"data.reader.path={data}",
        f"trainer.max_time={max_time(minutes)}",
        "callbacks.progress_bar=null",
        "promote_if_gated=true",
        *extra,
    ]
    env = {**os.environ, "RECSYS_ROOT": str(root), "OMP_NUM_THREADS": "1"}
    log = root / f"retrain-{len(list(root.glob('retrain-*.log')))}.log"  # follow it with tail
    started = time.perf_counter()
    with log.open("w") as out:
        code = subprocess.run(command, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - started
    if code != 0:
        sys.exit(f"recsys retrain failed ({code}):\n{log.read_text()[-4000:]}")
    report = sorted(root.glob("outputs/retrain/*/retrain.json"))[-1]
    return {
        "wall_seconds": seconds,
        "command": " ".join(command[2:]),
        **json.loads(report.read_text()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events-users", type=int, default=1000)
    parser.add_argument("--per-user", type=int, default=3)
    parser.add_argument("--minutes", type=float, default=1.0)
    parser.add_argument("--root", type=Path, default=Path("/tmp/retrain-bench"))
    parser.add_argument("--shared", type=Path, default=Path("../shared/data"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("overrides", nargs="*", help="more `recsys retrain` overrides")
    args = parser.parse_args()
    if args.root.exists():
        shutil.rmtree(args.root)
    data = args.root / "amazon-heldback"
    events = hold_back(
        args.shared / "amazon-book", data, args.events_users, args.per_user, args.seed
    )
    first = retrain(args.root, data, args.minutes, args.overrides)
    now = time.time()  # after production was built: the events are new to it
    dated = [Event(e.user_id, e.book_id, e.type, now + i / 100) for i, e in enumerate(events)]
    store = open_store(f"sqlite:///{args.root}/artifacts/stores/recsys.db")
    stored, _ = store.events.append(dated)
    store.close()
    second = retrain(args.root, data, args.minutes, args.overrides)
    rows = {
        name: {
            "wall_s": run["wall_seconds"],
            "train_s": run["seconds"]["train"],
            "new_events": run["data"]["new_events"],
            "holdout_users": run["holdout"]["users"],
            "gate": "passed" if run["gate"]["passed"] else "failed",
            "stage": (run["registry"] or {}).get("stage"),
        }
        for name, run in (("first (no production)", first), ("second (+ events)", second))
    }
    print_table(rows, title=f"recsys retrain on Amazon-Book, {stored} stored events")
    write_json(Path("benchmarks/results/retrain.json"), {"first": first, "second": second})


if __name__ == "__main__":
    main()
