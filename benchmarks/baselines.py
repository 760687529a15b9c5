"""Baselines on Amazon-Book: popularity and ALS (implicit), plus data and evaluation timings.

    python benchmarks/baselines.py [--data ../shared/data/amazon-book] [--out benchmarks/results]

Validation carve: 20% of each user's items, seed 0 (the split every model is tuned on).
ALS is lightly tuned on that carve over a small grid, scored on a 10k-user sample, and the best
setting is then evaluated on all users. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import itertools
import os
import time
from functools import partial
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

from recsys.baselines.als import ALSRecommender
from recsys.data.io import read_amazon_book
from recsys.data.prepared import prepare
from recsys.data.split import random_holdout
from recsys.evaluation import EvalSet, evaluate
from recsys.inference.popularity import PopularityRecommender
from recsys.report import print_table, write_json

GRID = {"factors": [128, 256], "regularization": [1.0, 5.0], "alpha": [10.0, 20.0, 40.0]}
KS = (20,)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--data", default=os.environ.get("RECSYS_SHARED_DATA", "../shared/data") + "/amazon-book"
    )
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--quick", action="store_true", help="one ALS setting, no grid")
    args = parser.parse_args()
    if not Path(args.data).is_dir():
        raise SystemExit(f"Amazon-Book not found at {args.data}; pass --data PATH.")

    t0 = time.perf_counter()
    dataset = read_amazon_book(args.data)
    t_load = time.perf_counter() - t0
    data = prepare(dataset, partial(random_holdout, fraction=0.2, seed=0))
    t_prepare = time.perf_counter() - t0
    eval_set = EvalSet.from_prepared(data)
    train = data.matrix("train")

    rows: dict[str, dict[str, float]] = {}
    t0 = time.perf_counter()
    pop = PopularityRecommender.from_prepared(data)
    fit = time.perf_counter() - t0
    rows["popularity"] = {**evaluate(pop, eval_set, ks=KS), "fit_seconds": fit}

    grid = [dict(zip(GRID, values, strict=True)) for values in itertools.product(*GRID.values())]
    if args.quick:
        grid = [{"factors": 128, "regularization": 5.0, "alpha": 20.0}]
    tuning = []
    for params in grid:
        t0 = time.perf_counter()
        model = ALSRecommender.fit(train, iterations=15, **params)  # type: ignore[arg-type]
        fit = time.perf_counter() - t0
        score = evaluate(model, eval_set, ks=KS, max_users=10_000)
        tuning.append({**params, "recall@20": score["recall@20"], "fit_seconds": fit})
        print(f"ALS {params}: sample recall@20 {score['recall@20']:.4f} (fit {fit:.1f}s)")
    best = max(tuning, key=lambda row: row["recall@20"])
    params = {k: best[k] for k in GRID}
    t0 = time.perf_counter()
    als = ALSRecommender.fit(train, iterations=15, **params)  # type: ignore[arg-type]
    fit = time.perf_counter() - t0
    rows[f"als {params}"] = {**evaluate(als, eval_set, ks=KS), "fit_seconds": fit}

    columns = [
        "recall@20",
        "ndcg@20",
        "hit_rate@20",
        "coverage@20",
        "fit_seconds",
        "eval_seconds",
        "users",
    ]
    print_table(rows, columns, title="Amazon-Book, 20%-per-user validation carve (seed 0)")
    timings = {
        "load_seconds": t_load,
        "load_and_prepare_seconds": t_prepare,
        "prepare_target_seconds": 10.0,
        "full_eval_seconds_popularity": rows["popularity"]["eval_seconds"],
        "full_eval_seconds_als": rows[f"als {params}"]["eval_seconds"],
        "eval_target_seconds": 60.0,
        "als_over_popularity_recall@20": rows[f"als {params}"]["recall@20"]
        / rows["popularity"]["recall@20"],
    }
    print_table({"timings": timings}, title="timings")
    path = write_json(
        Path(args.out) / "baselines.json",
        {"data": data.summary, "results": rows, "als_tuning": tuning, "timings": timings},
    )
    print(f"written {path}")


if __name__ == "__main__":
    main()
