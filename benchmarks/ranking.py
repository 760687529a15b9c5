"""The two-stage pipeline on Amazon-Book against EASE and tuned ALS, in one run: every model
on the validation carve (where every choice is made) and on the test carve (reported only),
side by side, plus candidate recall@N, ranking latency and training time.

    python benchmarks/ranking.py [--minutes 10] [override ...]

Trains the full product with `training/train.py experiment=amazon_book` settings (retriever,
label retriever, sources, ranker) on the carve (`fit=carve`: the figures), then the serving
bundle as `recsys train experiment=amazon_book` writes it (`fit=all`: every interaction, the
recorded epochs), timed from data preparation on (`--no-serving-fit` skips it); extra config
overrides make an ablation row (e.g. `ranker.ease.enabled=false`). EASE and ALS are fit on
the same training part at the settings benchmarks/baselines.py selected on validation
(`ranker.ease.l2`, `ranker.mf`).
Prints tables, writes benchmarks/results/ranking.json.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("WANDB_MODE", "disabled")

import numpy as np
import torch

from recsys.bundle.reader import load_bundle
from recsys.evaluation import EvalSet, evaluate
from recsys.evaluation import carves as carves_of
from recsys.features.ranking import pair_features
from recsys.inference.ease import EaseRecommender
from recsys.inference.mf import MatrixFactorisation
from recsys.jobs.train import main as train_main
from recsys.report import print_table, write_json
from recsys.runner import compose_config, load_or_prepare, max_time

TWO_STAGE = "two-stage (two-tower + EASE + MF + co-occurrence -> rank)"


def candidate_recall(pipeline: Any, eval_set: EvalSet, n_users: int = 5000) -> float:
    """Share of held-out books present among the candidates (before ranking)."""
    users = np.random.default_rng(0).choice(
        eval_set.users, min(n_users, eval_set.users.size), replace=False
    )
    found = total = 0
    for start in range(0, users.size, 1000):
        batch = users[start : start + 1000]
        cands, _, _, _ = pipeline.stages(batch, eval_set.train[batch])
        truth = eval_set.val[batch]
        for row in range(len(batch)):
            positives = set(truth.indices[truth.indptr[row] : truth.indptr[row + 1]].tolist())
            found += len(positives & set(cands.books[row].tolist()))
            total += len(positives)
    return found / max(total, 1)


def latency(pipeline: Any, eval_set: EvalSet, n: int = 300) -> dict[str, float]:
    """Per single user: ranking its candidates (features + ranker; up to max_candidates) and
    the whole two-stage call."""
    users = eval_set.users[:n]
    rank_ms, total_ms, sizes = [], [], []
    for user in users:
        history = eval_set.train[[user]]
        started = time.perf_counter()
        cands, _, _, hist = pipeline.stages(np.array([user]), history)
        total_ms.append((time.perf_counter() - started) * 1000)
        sizes.append(int(cands.mask.sum()))
        started = time.perf_counter()
        dense = pair_features(
            cands, hist, pipeline.books, pipeline.log_popularity, pipeline.num_tags
        )
        with torch.no_grad():
            pipeline.ranker(dense, hist, torch.from_numpy(np.maximum(cands.books, 0)))
        rank_ms.append((time.perf_counter() - started) * 1000)
    return {
        "candidates_mean": float(np.mean(sizes)),
        "rank_p50_ms": float(np.percentile(rank_ms, 50)),
        "rank_p99_ms": float(np.percentile(rank_ms, 99)),
        "two_stage_p50_ms": float(np.percentile(total_ms, 50)),
        "two_stage_p99_ms": float(np.percentile(total_ms, 99)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shared", default=os.environ.get("RECSYS_SHARED_DATA", "../shared/data"))
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument(
        "--no-serving-fit", action="store_true", help="skip timing the fit=all serving bundle"
    )
    parser.add_argument("overrides", nargs="*", help="extra config overrides (ablations)")
    args = parser.parse_args()
    if not Path(args.shared, "amazon-book").is_dir():
        raise SystemExit(f"Amazon-Book not found under {args.shared}; pass --shared PATH.")
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    common = [
        "experiment=amazon_book",
        f"paths.shared_data_dir={args.shared}",
        "callbacks.progress_bar=null",
        *args.overrides,
    ]
    cfg = compose_config(
        "train", [*common, "fit=carve", f"trainer.max_time={max_time(args.minutes)}"]
    )
    data = load_or_prepare(cfg)
    carves = carves_of(data)
    train = data.matrix("train")
    # the baselines at the settings benchmarks/baselines.py selected on validation (recorded
    # in the experiment config), fit on the same training part, in this run
    ease_l2 = float(cfg.ranker.ease.l2)
    als = {str(k): v for k, v in dict(cfg.ranker.mf).items() if k != "enabled"}
    baselines: dict[str, dict[str, Any]] = {}
    for name, fit in (
        (f"EASE (l2={ease_l2:g})", lambda: EaseRecommender.fit(train, l2=ease_l2)),
        (f"ALS {als}", lambda: MatrixFactorisation.fit(train, seed=0, **als)),
    ):
        started = time.perf_counter()
        model = fit()
        seconds = time.perf_counter() - started
        baselines[name] = {c: evaluate(model, e, ks=(20,)) for c, e in carves.items()}
        baselines[name]["train_seconds"] = seconds
        del model
    started = time.perf_counter()
    result = train_main(cfg)
    wall = time.perf_counter() - started
    names = {
        "popularity": "popularity",
        "two_tower": "two-tower alone",
        "cooccurrence": "co-occurrence alone",
        "mf": "MF source alone (fold-in)",
        "ease": "EASE source alone (pruned)",
        "two_stage": TWO_STAGE,
    }
    runs = {
        names[key]: {"val": result["rows"][key], "test": result["test_rows"][key]}
        for key in names
        if key in result["rows"]
    }
    rows = {**baselines, **runs}
    table = {
        name: {
            f"{carve} {metric}": row[carve][metric]
            for metric in ("recall@20", "ndcg@20")
            for carve in ("val", "test")
        }
        for name, row in rows.items()
    }
    print_table(
        table, title="Amazon-Book, full catalogue: validation carve | test carve (reported only)"
    )
    pipeline = load_bundle(result["bundle"]).two_stage()
    extra = {
        f"candidate_recall@{pipeline.generator.max_candidates}": candidate_recall(
            pipeline, carves["val"]
        ),
        **latency(pipeline, carves["val"]),
        "bundle_train_wall_seconds": wall,
        "two_stage_train_seconds": result["rows"]["two_stage"]["train_seconds"],
        "two_tower_train_seconds": result["rows"]["two_tower"]["train_seconds"],
    }
    two = rows[TWO_STAGE]["test"]
    bars = {
        name: {
            "recall@20": two["recall@20"] / row["test"]["recall@20"],
            "ndcg@20": two["ndcg@20"] / row["test"]["ndcg@20"],
        }
        for name, row in rows.items()
        if name != TWO_STAGE
    }
    selected = {
        "retriever_epochs": result["best_epoch"] + 1,
        "label_retriever_epochs": result["label_retriever"]["best_epoch"] + 1,
        "ranker_epochs": result["ranker"]["best_epoch"] + 1,
    }
    extra.update({f"selected {k}": v for k, v in selected.items()})
    payload = {
        "rows": rows,
        "extra": extra,
        "test_ratios": bars,
        "bundle": result["bundle"],
        "overrides": args.overrides,
        "split": data.summary["split"],
        "selected": selected,
    }
    path = write_json(Path(args.out) / "ranking.json", payload)  # before the serving fit
    print_table(bars, title="test carve: two-stage / baseline (>1 means two-stage is better)")
    if not args.no_serving_fit:
        # the serving bundle as `recsys train experiment=amazon_book` writes it: fit=all with
        # the epochs the experiment records, data preparation included
        serving_cfg = compose_config("train", [*common, "fit=all"])
        recorded = {k: serving_cfg.selected[k] for k in selected}
        if recorded != selected:
            print(
                f"this run chose {selected} on validation; the experiment records {recorded}: "
                "update `selected` in configs/experiment/amazon_book.yaml"
            )
        started = time.perf_counter()
        serving = train_main(serving_cfg)
        extra["serving_bundle_wall_seconds"] = time.perf_counter() - started
        extra["serving_bundle_minutes_bar"] = 10.0
        extra["serving_bundle"] = serving["bundle"]
        extra.update({f"recorded {k}": v for k, v in recorded.items()})
        path = write_json(Path(args.out) / "ranking.json", payload)
    print_table({"two-stage": extra}, title="candidates, latency (single user, 2 cores), time")
    print(f"written {path}")


if __name__ == "__main__":
    main()
