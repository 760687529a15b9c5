"""The two-stage pipeline on Amazon-Book: popularity, ALS, two-tower alone, co-occurrence
alone and two-stage in one run, plus candidate recall@N and ranking latency.

    python benchmarks/ranking.py [--minutes 10]

Trains the full product with `training/train.py experiment=amazon_book` settings (retriever,
label retriever, ranker), so the bundle it writes is the real one
(`artifacts/bundles/amazon_book`). Prints tables, writes benchmarks/results/ranking.json.
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

from recsys.baselines.als import ALSRecommender
from recsys.bundle.reader import load_bundle
from recsys.evaluation import EvalSet, evaluate
from recsys.features.ranking import pair_features
from recsys.jobs.train import main as train_main
from recsys.report import print_table, write_json
from recsys.runner import compose_config, load_or_prepare, max_time

TWO_STAGE = "two-stage (two-tower + MF + co-occurrence -> rank)"
ALS = {"factors": 256, "regularization": 5.0, "alpha": 40.0}  # best of benchmarks/baselines.py


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
    args = parser.parse_args()
    if not Path(args.shared, "amazon-book").is_dir():
        raise SystemExit(f"Amazon-Book not found under {args.shared}; pass --shared PATH.")
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    cfg = compose_config(
        "train",
        [
            "experiment=amazon_book",
            f"paths.shared_data_dir={args.shared}",
            "callbacks.progress_bar=null",
            f"trainer.max_time={max_time(args.minutes)}",
        ],
    )
    data = load_or_prepare(cfg)
    eval_set = EvalSet.from_prepared(data)
    started = time.perf_counter()
    als = ALSRecommender.fit(data.matrix("train"), iterations=15, **ALS)  # type: ignore[arg-type]
    als_row = {**evaluate(als, eval_set, ks=(20,)), "train_seconds": time.perf_counter() - started}
    result = train_main(cfg)
    rows = {
        "popularity": result["rows"]["popularity"],
        f"ALS {ALS}": als_row,
        "two-tower alone": result["rows"]["two_tower"],
        "co-occurrence alone": result["rows"]["cooccurrence"],
        **({"MF source alone (fold-in)": result["rows"]["mf"]} if "mf" in result["rows"] else {}),
        TWO_STAGE: result["rows"]["two_stage"],
    }
    columns = ["recall@20", "ndcg@20", "hit_rate@20", "coverage@20", "train_seconds"]
    print_table(rows, columns, title="Amazon-Book, validation carve (seed 0), full catalogue")
    pipeline = load_bundle(result["bundle"]).two_stage()
    extra = {
        f"candidate_recall@{pipeline.generator.max_candidates}": candidate_recall(
            pipeline, eval_set
        ),
        **latency(pipeline, eval_set),
    }
    two = rows[TWO_STAGE]
    bars = {
        name: {
            "recall@20": two["recall@20"] / row["recall@20"],
            "ndcg@20": two["ndcg@20"] / row["ndcg@20"],
        }
        for name, row in rows.items()
        if not name.startswith("two-stage")
    }
    print_table({"two-stage": extra}, title="candidates and latency (single user, 2 cores)")
    print_table(bars, title="two-stage / baseline (>1 means two-stage is better)")
    path = write_json(
        Path(args.out) / "ranking.json",
        {"rows": rows, "extra": extra, "ratios": bars, "bundle": result["bundle"]},
    )
    print(f"written {path}")


if __name__ == "__main__":
    main()
