"""FAISS index types on 1,000,000 clustered 64-d book vectors, plus the Amazon-Book bundle.

    python benchmarks/index.py [--n 1000000] [--bundle artifacts/bundles/amazon_book]

For each index type: build time, memory, QPS at batch 1 and batch 256, recall@100 vs exact
(search parameters auto-tuned to recall >= 0.98). QPS is reported as a ratio to exact search
measured in the same run. With a bundle: end-to-end Recall@20 through each index vs exact.
Prints tables and writes benchmarks/results/index.json.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "2")

import faiss
import numpy as np

from recsys.index.faiss_index import FaissIndex, IndexSpec, build_index, recall_at_k
from recsys.report import print_table, write_json

SPECS = {
    "flat (exact)": IndexSpec(kind="flat"),
    "ivf_flat": IndexSpec(kind="ivf_flat"),
    "hnsw M16": IndexSpec(kind="hnsw", hnsw_m=16, ef_construction=100),
    "ivf_pq 16x8 + refine": IndexSpec(kind="ivf_pq", pq_m=16),
}


def clustered(n: int, dim: int, seed: int, clusters: int = 2000) -> np.ndarray:
    """Unit vectors around cluster centres with varied spread (like learned embeddings)."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(1234).normal(size=(clusters, dim)).astype(np.float32)
    spread = np.random.default_rng(99).uniform(0.2, 0.6, clusters).astype(np.float32)
    which = rng.integers(0, clusters, n)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 200_000):
        part = which[start : start + 200_000]
        noise = rng.normal(size=(part.size, dim)).astype(np.float32)
        out[start : start + part.size] = centres[part] + spread[part, None] * noise
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def qps(index: FaissIndex, queries: np.ndarray, batch: int, seconds: float = 3.0) -> float:
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for start in range(0, len(queries), batch):
            index.search(queries[start : start + batch], 100)
            done += min(batch, len(queries) - start)
            if time.perf_counter() - started >= seconds:
                break
    return done / (time.perf_counter() - started)


def synthetic(n: int) -> dict[str, dict[str, Any]]:
    vectors = clustered(n, 64, seed=0)
    tune_queries = clustered(1000, 64, seed=1)
    test_queries = clustered(1000, 64, seed=2)
    rows: dict[str, dict[str, Any]] = {}
    exact = faiss.IndexFlatIP(64)
    exact.add(vectors)
    _, truth = exact.search(test_queries, 100)
    for name, spec in SPECS.items():
        started = time.perf_counter()
        index = build_index(vectors, np.arange(n), spec, tune_queries)
        total_build = time.perf_counter() - started
        found, _ = index.search(test_queries, 100)
        rows[name] = {
            "build_s": index.report.build_seconds,
            "build+tune_s": total_build,
            "memory_MiB": faiss.serialize_index(index.index).nbytes / 2**20,
            "params": str(index.report.search_params),
            "recall@100": recall_at_k(found, truth),
            "qps_b1": qps(index, test_queries, 1),
            "qps_b256": qps(index, test_queries, 256),
        }
        print(name, rows[name], flush=True)
    base = rows["flat (exact)"]
    for row in rows.values():
        row["speedup_b1"] = row["qps_b1"] / base["qps_b1"]
        row["speedup_b256"] = row["qps_b256"] / base["qps_b256"]
    return rows


def bundle_check(path: str) -> dict[str, dict[str, Any]]:
    """End-to-end Recall@20 through each approximate index vs exact, on the bundle's data."""
    from recsys.bundle.reader import load_bundle
    from recsys.data.prepared import PreparedData
    from recsys.evaluation import EvalSet, evaluate
    from recsys.training.index import index_books, user_queries

    bundle = load_bundle(path)
    data = PreparedData.load(Path("data/processed") / bundle.manifest.bundle_name)
    if data.summary["data_fingerprint"] != bundle.manifest.data_fingerprint:
        raise SystemExit("prepared data does not match the bundle's data fingerprint")
    eval_set = EvalSet.from_prepared(data)
    exact = evaluate(bundle.recommender(use_index=False), eval_set, ks=(20,))
    rows = {"exact": {"recall@20": exact["recall@20"], "eval_s": exact["eval_seconds"]}}
    queries = user_queries(bundle)
    for name, spec in SPECS.items():
        if spec.kind == "flat":
            continue
        rec = bundle.recommender(use_index=False)
        rec.index = index_books(bundle.book_embeddings, spec, queries)
        got = evaluate(rec, eval_set, ks=(20,))
        rows[name] = {
            "recall@20": got["recall@20"],
            "eval_s": got["eval_seconds"],
            "delta_vs_exact": got["recall@20"] - exact["recall@20"],
            "index_recall@100": rec.index.report.recall,
        }
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--bundle", default="artifacts/bundles/amazon_book")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    rows = synthetic(args.n)
    print_table(rows, title=f"{args.n:,} clustered 64-d vectors, k=100, 2 cores")
    result: dict[str, Any] = {"synthetic": rows}
    if Path(args.bundle).exists():
        result["bundle"] = bundle_check(args.bundle)
        print_table(result["bundle"], title=f"end-to-end Recall@20, {args.bundle}")
    passing = [n for n, r in rows.items() if r["recall@100"] >= 0.98 and r["speedup_b1"] >= 20]
    result["bar_met_by"] = passing
    print(f"approximate types with recall@100 >= 0.98 at >= 20x exact QPS (batch 1): {passing}")
    print(f"written {write_json(Path(args.out) / 'index.json', result)}")


if __name__ == "__main__":
    main()
