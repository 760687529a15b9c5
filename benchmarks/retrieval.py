"""Two-tower retrieval on Amazon-Book vs popularity and ALS, with one ablation row per ingredient.

    python benchmarks/retrieval.py [--minutes 10] [--ablation-minutes 4] [--skip-ablations]

Every model is trained on the 20%-per-user validation carve (seed 0) and scored on the full
catalogue in the same run. The main two-tower row trains for at most --minutes; ablations
(each one ingredient changed) for at most --ablation-minutes and are compared with a
baseline row trained for the same time, so each delta is like for like. Amazon-Book has no
book metadata, so there is no side-feature ablation here (tests show side features on
synthetic data).
Prints a table and writes benchmarks/results/retrieval.json.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("WANDB_MODE", "disabled")

from recsys.baselines.als import ALSRecommender
from recsys.evaluation import EvalSet, evaluate
from recsys.jobs.train import main as train_main
from recsys.report import print_table, write_json
from recsys.runner import compose_config, load_or_prepare, max_time

ALS = {"factors": 256, "regularization": 5.0, "alpha": 40.0}  # best of benchmarks/baselines.py
ABLATIONS = {
    "random init (vs spectral)": ["model.init=random"],
    "no logQ correction": ["model.task.logq_correction=false"],
    "no mixed negatives (in-batch only)": ["model.task.num_uniform_negatives=0"],
    "history length 20 (vs 100)": ["features.config.max_history=20"],
    "temperature 0.05 (vs 0.1)": ["model.task.temperature=0.05"],
    "mean+attention pooling (vs mean)": ["model.user_tower.pooling=mean+attention"],
    "learned temperature": ["model.task.learn_temperature=true"],
    "history dropout 0.1 (vs 0.3)": ["model.history_dropout=0.1"],
    "MLP towers, hidden layer 128 (vs linear)": [
        "model.user_tower.hidden_dims=[128]",
        "model.book_tower.hidden_dims=[128]",
    ],
}
COLUMNS = [
    "recall@20",
    "ndcg@20",
    "hit_rate@20",
    "coverage@20",
    "train_seconds",
    "examples/s",
    "epochs",
]


def _two_tower(root: Path, shared: str, minutes: float, extra: list[str]) -> dict[str, Any]:
    cfg = compose_config(
        "train",
        [
            "experiment=amazon_book",
            f"paths.shared_data_dir={shared}",
            "callbacks.progress_bar=null",
            f"trainer.max_time={max_time(minutes)}",
            "logger=csv",
            "ranker.enabled=false",
            *extra,
        ],
        root=root,
    )
    result = train_main(cfg)
    return {
        **result["metrics"],
        "train_seconds": result["train_seconds"],
        "examples/s": result["examples_per_second"],
        "epochs": result["epochs"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shared", default=os.environ.get("RECSYS_SHARED_DATA", "../shared/data"))
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--ablation-minutes", type=float, default=3.0)
    parser.add_argument("--skip-ablations", action="store_true")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    if not Path(args.shared, "amazon-book").is_dir():
        raise SystemExit(f"Amazon-Book not found under {args.shared}; pass --shared PATH.")
    root = Path(tempfile.mkdtemp(prefix="recsys-bench-"))
    rows: dict[str, dict[str, Any]] = {}

    cfg = compose_config(
        "train", ["experiment=amazon_book", f"paths.shared_data_dir={args.shared}"], root=root
    )
    data = load_or_prepare(cfg)
    eval_set = EvalSet.from_prepared(data)
    from recsys.inference.popularity import PopularityRecommender

    rows["popularity"] = evaluate(PopularityRecommender.from_prepared(data), eval_set, ks=(20,))
    started = time.perf_counter()
    als = ALSRecommender.fit(data.matrix("train"), iterations=15, **ALS)  # type: ignore[arg-type]
    rows[f"ALS {ALS}"] = {
        **evaluate(als, eval_set, ks=(20,)),
        "train_seconds": time.perf_counter() - started,
    }

    rows[f"two-tower ({args.minutes:g} min)"] = _two_tower(
        root / "main", args.shared, args.minutes, []
    )
    if not args.skip_ablations:
        rows[f"two-tower ({args.ablation_minutes:g} min, ablation baseline)"] = _two_tower(
            root / "base", args.shared, args.ablation_minutes, []
        )
        for i, (name, overrides) in enumerate(ABLATIONS.items()):
            rows[f"  {name}"] = _two_tower(
                root / f"ab{i}", args.shared, args.ablation_minutes, overrides
            )

    print_table(rows, COLUMNS, title="Amazon-Book retrieval, validation carve (seed 0)")
    main_row = rows[f"two-tower ({args.minutes:g} min)"]
    als_row = rows[f"ALS {ALS}"]
    verdict = {
        "two_tower_over_als_recall@20": main_row["recall@20"] / als_row["recall@20"],
        "two_tower_over_popularity_recall@20": main_row["recall@20"]
        / rows["popularity"]["recall@20"],
        "bar_two_tower_ge_als": main_row["recall@20"] >= als_row["recall@20"],
    }
    print_table({"ratios": verdict})
    path = write_json(
        Path(args.out) / "retrieval.json", {"rows": rows, "verdict": verdict, "data": data.summary}
    )
    print(f"written {path}")


if __name__ == "__main__":
    main()
