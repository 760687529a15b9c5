"""This checkout's server against an older commit's, alternated in one sitting.

    python benchmarks/serving_ab.py --against <git ref> [--runners local,local-2w]
        [--rounds 3] [--clients 8] [--seconds 10] [--bundle artifacts/bundles/amazon_book]

This machine's speed moves by up to ±25 % between runs minutes apart, so a change is judged by
ratios inside a round: each round loads every runner with this checkout's code and with the
code of ``--against`` back to back, the order alternating from round to round. The older code
is ``git archive``'s copy of its ``src/`` and ``configs/`` in a temporary folder, first on the
server's ``PYTHONPATH``; the load generator is this checkout's (``benchmarks/serving.py``),
user recommendations only. Prints each round's RPS and server CPU per request for both codes with
their ratios, then the median ratios; writes benchmarks/results/serving_ab.json.
"""

from __future__ import annotations

import argparse
import io
import random
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from serving import bench_runner

from recsys.bundle.reader import load_bundle
from recsys.report import print_table, write_json


def export_src(ref: str, folder: Path) -> Path:
    """``ref``'s ``src/`` and ``configs/`` (which the CLI finds next to the package) written
    under ``folder``; exits with a message naming the fix when git does not know the ref."""
    command = ["git", "archive", ref, "src", "configs"]
    archive = subprocess.run(command, capture_output=True, check=False)
    if archive.returncode != 0:
        sys.exit(f"cannot export {ref!r}: {archive.stderr.decode().strip()} (give a commit)")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(folder, filter="data")
    return folder / "src"


def ratios(rows: list[dict[str, Any]], runner: str) -> dict[str, float]:
    """Median over the rounds of this code's RPS and server CPU per request, each divided by
    the older code's in the same round."""
    mine = [r for r in rows if r["runner"] == runner and r["code"] == "this"]
    theirs = [r for r in rows if r["runner"] == runner and r["code"] == "against"]
    pairs = [(a, b) for a in mine for b in theirs if a["round"] == b["round"]]
    return {
        "rps_ratio": statistics.median(a["rps"] / b["rps"] for a, b in pairs),
        "server_cpu_ratio": statistics.median(
            a["server_cpu_ms"] / b["server_cpu_ms"] for a, b in pairs
        ),
        "rounds": len(pairs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--against", required=True, help="the older commit (any git ref)")
    parser.add_argument("--runners", default="local,local-2w")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--bundle", default="artifacts/bundles/amazon_book")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    bundle = load_bundle(args.bundle)
    rng = random.Random(0)
    users = bundle.histories.get_column("user_id").to_list()
    endpoints = {
        "user": lambda: ("POST", f"/recommendations/users/{rng.choice(users)}", {"limit": 10})
    }
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="recsys-ab-") as tmp:
        older = {"PYTHONPATH": str(export_src(args.against, Path(tmp)))}
        for round_ in range(1, args.rounds + 1):
            codes = [("this", None), ("against", older)]
            for code, env in codes if round_ % 2 else codes[::-1]:
                for runner in args.runners.split(","):
                    result = bench_runner(
                        runner, args.bundle, endpoints, args.seconds, str(args.clients), env=env
                    )
                    row = next(iter(result.values()))
                    rows.append({"round": round_, "runner": runner, "code": code, **row})
    print_table(
        {f"round {r['round']} {r['runner']} {r['code']}": r for r in rows},
        ["rps", "p99_ms", "server_cpu_ms", "client_cpu_ms", "worker_cores", "errors"],
        title=f"this checkout against {args.against}, {args.clients} clients",
    )
    summary = {runner: ratios(rows, runner) for runner in args.runners.split(",")}
    print_table(summary, title="this ÷ against, median over rounds")
    payload = {"against": args.against, "rows": rows, "summary": summary}
    print(f"written {write_json(Path(args.out) / 'serving_ab.json', payload)}")


if __name__ == "__main__":
    main()
