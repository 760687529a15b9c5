"""Baselines at full strength on Amazon-Book: popularity, ItemKNN, ALS and EASE, each tuned on
the validation carve by a search that shows it bracketed the optimum, then reported on the
validation carve and on the test carve (never used for a choice) side by side.

    python benchmarks/baselines.py [--shared ../shared/data] [--sample 10000] [--quick]

The carve is the `experiment=amazon_book` split (the one training uses). Settings are chosen
on a seeded sample of validation users (`--sample`); the chosen ones are then scored on every
validation and test-carve user. On the test carve a model reads training + validation rows as
history (ALS folds its user vectors in from that history). Settings chosen here are the ones
the experiment config records (`ranker.mf`, `ranker.ease`) and benchmarks/ranking.py refits.
Prints tables, writes benchmarks/results/baselines.json.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "2")

import torch

from recsys.baselines.tuning import Search, Settings, bracket_search
from recsys.evaluation import carves as carves_of
from recsys.evaluation import evaluate
from recsys.inference.cooccurrence import CooccurrenceRecommender
from recsys.inference.ease import EaseRecommender
from recsys.inference.mf import MatrixFactorisation
from recsys.inference.popularity import PopularityRecommender
from recsys.report import print_table, write_json
from recsys.runner import compose_config, load_or_prepare
from recsys.types import Recommender

KS = (20,)
Grid = dict[str, list[Any]]
ITEMKNN: Grid = {"k": [25, 50, 100, 200, 400, 800, 1600]}
ALS: Grid = {
    "factors": [64, 128, 256, 512],
    "regularization": [0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0],
    "alpha": [5.0, 10.0, 20.0, 40.0, 80.0, 160.0],
    "iterations": [8, 15, 30, 60],
}
EASE: Grid = {"l2": [25.0, 50.0, 100.0, 200.0, 400.0, 800.0, 1600.0, 3200.0]}
PRUNED_K = (100, 200, 500, 1000)  # EASE weights kept per book (the served, sparse form)
# where each search starts: the best setting of the previous run (2026-11-30, this carve), so a
# rerun confirms it is bracketed instead of walking there again
START: dict[str, Settings] = {
    "itemknn": {"k": 800},
    "als": {"factors": 256, "regularization": 20.0, "alpha": 80.0, "iterations": 30},
    "ease": {"l2": 200.0},
}
QUICK: dict[str, Grid] = {  # one setting each: a smoke run of the script
    "itemknn": {"k": [800]},
    "als": {"factors": [256], "regularization": [20.0], "alpha": [80.0], "iterations": [30]},
    "ease": {"l2": [200.0]},
}


def timed(fit: Callable[..., Recommender], *args: Any) -> tuple[Recommender, float]:
    started = time.perf_counter()
    model = fit(*args)
    return model, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shared", default=os.environ.get("RECSYS_SHARED_DATA", "../shared/data"))
    parser.add_argument("--sample", type=int, default=10_000, help="validation users per trial")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--quick", action="store_true", help="one setting per model, no search")
    args = parser.parse_args()
    if not Path(args.shared, "amazon-book").is_dir():
        raise SystemExit(f"Amazon-Book not found under {args.shared}; pass --shared PATH.")
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

    cfg = compose_config(
        "train", ["experiment=amazon_book", "fit=carve", f"paths.shared_data_dir={args.shared}"]
    )
    data = load_or_prepare(cfg)
    carves = carves_of(data)
    train = data.matrix("train")
    grids: dict[str, Grid] = (
        {"itemknn": ITEMKNN, "als": ALS, "ease": EASE} if not args.quick else QUICK
    )
    fitters: dict[str, Callable[[Settings], Recommender]] = {
        "itemknn": lambda s: CooccurrenceRecommender.fit(train, k=s["k"]),
        "als": lambda s: MatrixFactorisation.fit(train, seed=0, **s),
        "ease": lambda s: EaseRecommender.fit(train, l2=s["l2"]),
    }

    searches: dict[str, Search] = {}
    for name, grid in grids.items():

        def trial(settings: Settings, name: str = name) -> float:
            model, seconds = timed(fitters[name], settings)
            recall = evaluate(model, carves["val"], ks=KS, max_users=args.sample)["recall@20"]
            print(
                f"{name} {settings}: validation sample recall@20 {recall:.4f} (fit {seconds:.0f} s)"
            )
            return recall

        searches[name] = bracket_search(trial, grid, START[name])

    rows: dict[str, dict[str, Any]] = {}

    def report(label: str, model: Recommender, seconds: float) -> None:
        row: dict[str, Any] = {"fit_seconds": seconds}
        for carve, eval_set in carves.items():
            metrics = evaluate(model, eval_set, ks=KS)
            row.update(
                {f"{carve} {m}": metrics[m] for m in ("recall@20", "ndcg@20", "coverage@20")}
            )
        rows[label] = row
        print(f"{label}: {row}")

    report("popularity", *timed(PopularityRecommender.from_prepared, data))
    for name, search in searches.items():
        model, seconds = timed(fitters[name], search.best)
        report(f"{name} {search.best}", model, seconds)
        if isinstance(model, EaseRecommender):
            for k in PRUNED_K:
                pruned, extra = timed(model.pruned, k)
                report(f"ease {search.best} pruned to {k}/book", pruned, seconds + extra)
        del model

    columns = [f"{c} {m}" for m in ("recall@20", "ndcg@20") for c in carves] + ["fit_seconds"]
    print_table(rows, columns, title="Amazon-Book: validation carve | test carve (reported only)")
    print_table(
        {
            name: {
                **s.best,
                "val sample recall@20": s.best_score,
                "trials": len(s.trials),
                "unbracketed": ",".join(s.unbracketed) or "-",
            }
            for name, s in searches.items()
        },
        title="selected on the validation carve",
    )
    path = write_json(
        Path(args.out) / "baselines.json",
        {
            "data": data.summary,
            "rows": rows,
            "searches": {
                name: {
                    "best": s.best,
                    "best_val_sample_recall@20": s.best_score,
                    "unbracketed": s.unbracketed,
                    "exhausted": s.exhausted,
                    "trials": s.trials,
                }
                for name, s in searches.items()
            },
            "sample_users": args.sample,
        },
    )
    print(f"written {path}")


if __name__ == "__main__":
    main()
