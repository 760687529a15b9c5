"""The personalised model path in process (no HTTP): cost per batch and per request.

    python benchmarks/model_path.py [--bundle artifacts/bundles/amazon_book] [--batches 1,8,16]

For each batch size, 40 batches of random known readers (their histories from the bundle)
go through `RecommendationService.personalised` (candidates, ranker, reasons) as the
micro-batcher sends them; the best of 5 repetitions is reported, with the ratio of the
per-request cost to batch size 1 in the same run. `--profile` adds a cProfile of batches of
`--profile-batch` requests (default 8): the 25 functions with the most time of their own, and
with `--profile-cumulative` the 30 recsys functions with the most time under them. Prints a
table, writes benchmarks/results/model_path.json.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import random
import time
from pathlib import Path

from recsys.bundle.reader import load_bundle
from recsys.report import print_table, write_json
from recsys.serving.personalised import Personal
from recsys.serving.service import RecommendationService


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", default="artifacts/bundles/amazon_book")
    parser.add_argument("--batches", default="1,8,16")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--profile-cumulative", action="store_true")
    parser.add_argument("--profile-batch", type=int, default=8, help="batch size profiled")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    bundle = load_bundle(args.bundle)
    service = RecommendationService(bundle, stage_timeout_s=30.0)
    rng = random.Random(0)
    users = [str(u) for u in bundle.known_histories.get_column("user_id").to_list()]

    def batch(n: int) -> list[Personal]:
        chosen = rng.sample(users, n)
        matrix = service.history_matrix([service.user_history(u) or [] for u in chosen])
        return [
            Personal(u, matrix[i : i + 1], 10, set(), None, "personalized")
            for i, u in enumerate(chosen)
        ]

    rows = {}
    for n in (int(b) for b in args.batches.split(",")):
        batches = [batch(n) for _ in range(40)]
        service.personalised(batches[0])
        best = float("inf")
        for _ in range(5):
            started = time.perf_counter()
            for requests in batches:
                service.personalised(requests)
            best = min(best, (time.perf_counter() - started) / len(batches))
        rows[f"batch {n}"] = {"ms_per_batch": best * 1000, "ms_per_request": best * 1000 / n}
    first = next(iter(rows.values()))["ms_per_request"]
    for row in rows.values():
        row["per_request_vs_first"] = row["ms_per_request"] / first
    print_table(rows, title=f"model path, {bundle.version}")
    if args.profile:
        batches = [batch(args.profile_batch) for _ in range(480 // args.profile_batch)]
        profiler = cProfile.Profile()
        profiler.enable()
        for requests in batches:
            service.personalised(requests)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
        if args.profile_cumulative:
            pstats.Stats(profiler).sort_stats("cumtime").print_stats("recsys", 30)
    service.close()
    print(f"written {write_json(Path(args.out) / 'model_path.json', {'rows': rows})}")


if __name__ == "__main__":
    main()
