"""Two-tower retrieval on Amazon-Book vs popularity and ALS, with one ablation row per ingredient.

    python benchmarks/retrieval.py [--minutes 10] [--ablation-minutes 4] [--skip-ablations]

Every model is trained on the `experiment=amazon_book` carve (`fit=carve`: training part,
choices on validation) and scored on the full catalogue in the same run, on the validation
carve and, beside it, the test carve (`test/` columns; reported only). The main two-tower row
trains for at most --minutes; ablations (each one ingredient changed) for at most
--ablation-minutes and are compared with a baseline row trained for the same time, so each
delta is like for like. Amazon-Book has no book metadata, so there is no side-feature
ablation here (tests show side features on synthetic data).
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

from recsys.evaluation import carves as carves_of
from recsys.evaluation import evaluate
from recsys.inference.mf import MatrixFactorisation
from recsys.jobs.train import main as train_main
from recsys.report import print_table, write_json
from recsys.runner import compose_config, load_or_prepare, max_time

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
    "test/recall@20",
    "ndcg@20",
    "test/ndcg@20",
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
            "fit=carve",
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
        "train",
        ["experiment=amazon_book", "fit=carve", f"paths.shared_data_dir={args.shared}"],
        root=root,
    )
    data = load_or_prepare(cfg)
    carves = {("" if c == "val" else "test/"): e for c, e in carves_of(data).items()}
    from recsys.inference.popularity import PopularityRecommender

    def both(model: Any) -> dict[str, float]:
        return {
            f"{prefix}{k}": v
            for prefix, eval_set in carves.items()
            for k, v in evaluate(model, eval_set, ks=(20,)).items()
        }

    rows["popularity"] = both(PopularityRecommender.from_prepared(data))
    started = time.perf_counter()
    als_settings = {str(k): v for k, v in dict(cfg.ranker.mf).items() if k != "enabled"}
    als = MatrixFactorisation.fit(data.matrix("train"), seed=0, **als_settings)
    ALS = f"ALS {als_settings} (experiment's ranker.mf)"
    rows[ALS] = {**both(als), "train_seconds": time.perf_counter() - started}

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

    print_table(rows, COLUMNS, title="Amazon-Book retrieval: validation | test carve (test/)")
    main_row = rows[f"two-tower ({args.minutes:g} min)"]
    als_row = rows[ALS]
    verdict = {
        "two_tower_over_als_test_recall@20": main_row["test/recall@20"] / als_row["test/recall@20"],
        "two_tower_over_popularity_test_recall@20": main_row["test/recall@20"]
        / rows["popularity"]["test/recall@20"],
        "bar_two_tower_ge_als": main_row["test/recall@20"] >= als_row["test/recall@20"],
    }
    print_table({"ratios": verdict})
    path = write_json(
        Path(args.out) / "retrieval.json", {"rows": rows, "verdict": verdict, "data": data.summary}
    )
    print(f"written {path}")


if __name__ == "__main__":
    main()
