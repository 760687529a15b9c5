"""Growth benchmark: what each step costs as the data grows (issue #23).

    python benchmarks/scale.py [--scales 1,4,16] [--base-users 62500] [--base-books 12500]
        [--mean-history 25] [--steps 100] [--score-users 20000] [--requests 300]

Synthetic data with the planted structure (recsys.data.synthetic) at each scale: users and
books grow with the scale, each reader's history does not, so interactions grow with it too
(16 x the defaults: 1,000,000 readers x 200,000 books x ~25 M interactions). For each scale,
every step runs as the product runs it, each `recsys` command in its own process, its peak
memory sampled (the whole process tree, every 0.2 s):

- **prepare**: `recsys data prepare +fit=all` (read, split, vocabularies, Parquet);
- **train**: `recsys train fit=all` for one epoch cut to ``--steps`` steps of 1,024 examples,
  two-tower only (``ranker.enabled=false``: the ranker's EASE is a dense books x books solve
  that stops at 40,000 books), HNSW index: wall time, training examples/s, peak memory;
- **index**: HNSW build + tuning on the bundle's book vectors, and one-query search time
  against exact (flat) search in the same run (the ratio is the index's speed-up);
- **batch-score**: `recsys batch-score` of ``--score-users`` users, top-100: users/s;
- **serve**: `recsys serve` (uvicorn, one worker) on the bundle: resident memory once
  ready, and latency of ``--requests`` sequential personalised requests.

Every figure is also given as a ratio to the same figure at the smallest scale of the run.
Prints a table, writes benchmarks/results/scale.json and scale.png (cost against size).

``--only prepare`` measures data preparation from a file instead (``--memory-cap-mib N``: each
preparation in a cgroup capped at N MiB, where the machine allows it; a preparation the cap
kills shows its exit status): the synthetic interactions
written to Parquet (string ids), then `recsys data prepare data=custom` of that file in memory
and streamed through ``--buckets`` buckets (`data.buckets`, recsys.data.streaming): wall time
and peak memory of each, and streamed ÷ in-memory. Writes benchmarks/results/scale_prepare.json.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from batch import measured, tree_rss_mib

from recsys.bundle.reader import load_bundle
from recsys.index.faiss_index import IndexSpec
from recsys.report import print_table, write_json
from recsys.serving.local import spawn_server
from recsys.training.index import index_books, user_queries

BOOKS_PER_AUTHOR = 16  # as the default synthetic data (2,000 books, 12 genres x 10 authors)
GENRES = 20


def command(
    args: list[str], root: Path, enter: Callable[[], None] | None = None, check: bool = True
) -> dict[str, Any]:
    """Run ``recsys <args>`` under ``root``; wall seconds and peak memory of its tree.
    ``enter`` runs in the child before it starts (joining a memory-capped cgroup); without
    ``check``, a failed command gives its exit status instead of raising."""
    env = {**os.environ, "OMP_NUM_THREADS": "2", "WANDB_MODE": "offline", "RECSYS_ROOT": str(root)}
    argv = [sys.executable, "-m", "recsys", *args]
    status, output, wall, peak = measured(argv, env, root, enter)
    if status != 0 and check:
        raise RuntimeError(f"recsys {' '.join(args)} failed:\n{output[-4000:]}")
    return {"wall_s": round(wall, 1), "peak_rss_mib": round(peak), "exit": status}


def memory_cap(mib: int) -> Callable[[], None]:
    """A cgroup (v1 memory controller) capped at ``mib``; the function a child calls to join
    it. Needs a writable /sys/fs/cgroup/memory (root in a container that allows it)."""
    group = Path("/sys/fs/cgroup/memory") / f"recsys-scale-{os.getpid()}"
    try:
        group.mkdir(exist_ok=True)
        (group / "memory.limit_in_bytes").write_text(str(mib * 2**20))
    except OSError as exc:
        raise SystemExit(
            f"--memory-cap-mib needs a writable cgroup v1 memory controller: {exc}"
        ) from None

    def enter() -> None:
        (group / "cgroup.procs").write_text(str(os.getpid()))

    atexit.register(lambda: group.rmdir() if group.is_dir() else None)  # empty by then
    return enter


def data_overrides(scale: int, args: argparse.Namespace) -> list[str]:
    books = args.base_books * scale
    return [
        f"data.name=scale{scale}",
        f"data.reader.n_users={args.base_users * scale}",
        f"data.reader.n_books={books}",
        f"data.reader.n_genres={GENRES}",
        f"data.reader.authors_per_genre={max(1, books // (GENRES * BOOKS_PER_AUTHOR))}",
        f"data.reader.mean_history={args.mean_history}",
    ]


def measure_index(bundle_path: Path, queries_n: int = 1000) -> dict[str, Any]:
    """HNSW build + tuning time, and one query at a time: HNSW against exact search."""
    bundle = load_bundle(bundle_path)
    queries = user_queries(bundle, n=queries_n)
    started = time.perf_counter()
    hnsw = index_books(bundle.book_embeddings, IndexSpec(kind="hnsw"), queries)
    build = time.perf_counter() - started
    flat = index_books(bundle.book_embeddings, IndexSpec(kind="flat"), queries[:10])

    def per_query_ms(index: Any) -> float:
        times = []
        for row in queries[:300]:
            t = time.perf_counter()
            index.search(row[None, :], 100)
            times.append(time.perf_counter() - t)
        return float(np.median(times) * 1000)

    exact_ms, hnsw_ms = per_query_ms(flat), per_query_ms(hnsw)
    return {
        "build_s": round(build, 1),
        "recall@100": round(hnsw.report.recall, 3),
        "hnsw_query_ms": round(hnsw_ms, 3),
        "exact_query_ms": round(exact_ms, 3),
        "hnsw_speedup": round(exact_ms / hnsw_ms, 1),
    }


def measure_serving(bundle_path: Path, root: Path, requests: int) -> dict[str, Any]:
    import httpx

    bundle = load_bundle(bundle_path)
    users = bundle.known_histories.get_column("user_id").to_list()
    rng = np.random.default_rng(0)
    env = {"RECSYS_ROOT": str(root), "OMP_NUM_THREADS": "2"}
    started = time.perf_counter()
    process, base = spawn_server(
        [f"bundle={bundle_path}", "auth.enabled=false"], env=env, timeout_s=900
    )
    ready = time.perf_counter() - started
    try:
        latencies, failed = [], 0
        with httpx.Client(base_url=base, timeout=30) as client:
            for i in range(requests + 20):
                user = users[int(rng.integers(len(users)))]
                t = time.perf_counter()
                try:
                    response = client.post(f"/recommendations/users/{user}", json={"limit": 10})
                    ok = response.status_code == 200
                    personal = ok and response.json()["metadata"]["source"] == "personalized"
                except httpx.HTTPError:
                    personal = False
                if i >= 20:  # the first 20 warm up
                    latencies.append(time.perf_counter() - t)
                    failed += not personal
        rss = tree_rss_mib(process.pid)
    finally:
        process.terminate()
        process.wait(timeout=60)
    return {
        "ready_s": round(ready, 1),
        "rss_mib": round(rss),
        "p50_ms": round(float(np.percentile(latencies, 50)) * 1000, 2),
        "p99_ms": round(float(np.percentile(latencies, 99)) * 1000, 2),
        "not_personalised": failed,
    }


def one_scale(scale: int, args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    root = scratch / f"scale{scale}"
    root.mkdir(parents=True)
    data = data_overrides(scale, args)
    row: dict[str, Any] = {"scale": scale}
    prepare = command(["data", "prepare", *data, "+fit=all"], root)
    summary = json.loads(
        (root / "data" / "processed" / f"scale{scale}" / "summary.json").read_text()
    )
    row.update(users=summary["users"], books=summary["books"], interactions=summary["interactions"])
    row["prepare"] = prepare
    print(f"scale {scale}: prepared {summary['interactions']:,} interactions {prepare}", flush=True)
    train = command(
        [
            "train",
            *data,
            "fit=all",
            "selected.retriever_epochs=1",
            f"trainer.limit_train_batches={args.steps}",
            "ranker.enabled=false",
            "index=hnsw",
            "callbacks.progress_bar=null",
        ],
        root,
    )
    bundle_path = sorted((root / "artifacts" / "bundles" / f"scale{scale}").glob("2*"))[-1]
    facts = json.loads((bundle_path / "eval" / "metrics.json").read_text())["training"]
    train["examples_per_s"] = round(facts["examples_per_second"])
    train["fit_s"] = round(facts["train_seconds"], 1)
    row["train"] = train
    print(f"scale {scale}: trained {train}", flush=True)
    row["index"] = measure_index(bundle_path)
    print(f"scale {scale}: index {row['index']}", flush=True)
    users_file = root / "users.parquet"
    known = load_bundle(bundle_path).known_histories.get_column("user_id")
    pl.DataFrame({"user_id": known[: args.score_users]}).write_parquet(users_file)
    out = root / "scores"
    batch = command(
        [
            "batch-score",
            f"bundle={bundle_path}",
            f"users={users_file}",
            "k=100",
            f"out={out}",
            "progress=false",
            "store_url=null",
        ],
        root,
    )
    manifest = json.loads((out / "manifest.json").read_text())
    batch["users_per_s"] = round(manifest["users_scored"] / manifest["seconds"])
    row["batch_score"] = batch
    print(f"scale {scale}: batch-score {batch}", flush=True)
    row["serve"] = measure_serving(bundle_path, root, args.requests)
    print(f"scale {scale}: serve {row['serve']}", flush=True)
    row["bundle_mib"] = round(
        sum(f.stat().st_size for f in bundle_path.rglob("*") if f.is_file()) / 2**20
    )
    shutil.rmtree(root, ignore_errors=True)  # the next scale needs the disk
    return row


def file_prepare(scale: int, args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    """The same interactions file prepared in memory and streamed through buckets."""
    root = scratch / f"file{scale}"
    root.mkdir(parents=True)
    events = root / "events.parquet"
    settings = {
        "n_users": args.base_users * scale,
        "n_books": args.base_books * scale,
        "n_genres": GENRES,
        "authors_per_genre": max(1, args.base_books * scale // (GENRES * BOOKS_PER_AUTHOR)),
        "mean_history": args.mean_history,
    }
    write = (
        "import sys; from recsys.data.synthetic import generate; "
        f"generate(**{settings!r}).interactions.write_parquet(sys.argv[1])"
    )
    subprocess.run([sys.executable, "-c", write, str(events)], check=True)
    row: dict[str, Any] = {"scale": scale, "file_mib": round(events.stat().st_size / 2**20)}
    base = ["data", "prepare", "data=custom", f"data.reader.interactions={events}"]
    enter = memory_cap(args.memory_cap_mib) if args.memory_cap_mib else None
    for how, extra in (("in_memory", []), ("streamed", [f"data.buckets={args.buckets}"])):
        row[how] = command([*base, f"data.name={how}", *extra], root, enter, check=not enter)
        summary_file = root / "data" / "processed" / how / "summary.json"
        if summary_file.is_file():
            row["interactions"] = json.loads(summary_file.read_text())["interactions"]
        print(f"scale {scale}: prepare {how} {row[how]}", flush=True)
    row["streamed_memory_ratio"] = round(
        row["streamed"]["peak_rss_mib"] / row["in_memory"]["peak_rss_mib"], 2
    )
    row["streamed_time_ratio"] = round(row["streamed"]["wall_s"] / row["in_memory"]["wall_s"], 2)
    shutil.rmtree(root, ignore_errors=True)
    return row


FIGURES = {  # (step, figure): the table's columns and the plot's lines
    "prepare s": ("prepare", "wall_s"),
    "prepare MiB": ("prepare", "peak_rss_mib"),
    "train wall s": ("train", "wall_s"),
    "train MiB": ("train", "peak_rss_mib"),
    "train ex/s": ("train", "examples_per_s"),
    "HNSW build s": ("index", "build_s"),
    "HNSW query ms": ("index", "hnsw_query_ms"),
    "exact query ms": ("index", "exact_query_ms"),
    "batch users/s": ("batch_score", "users_per_s"),
    "serve MiB": ("serve", "rss_mib"),
    "serve p50 ms": ("serve", "p50_ms"),
    "serve p99 ms": ("serve", "p99_ms"),
}


def table(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """One row per figure, one column per scale: the value and its ratio to the smallest
    scale's, ``value (×ratio)``."""
    first = rows[0]
    out: dict[str, dict[str, Any]] = {
        name: {f"{r['scale']}x": f"{r[name]:,}" for r in rows}
        for name in ("users", "books", "interactions")
    }
    for name, (step, key) in FIGURES.items():
        base = first[step][key]
        out[name] = {
            f"{r['scale']}x": f"{r[step][key]:,} (×{r[step][key] / base:.2f})" if base else "–"
            for r in rows
        }
    return out


PANELS = {  # the plot's two panels: what a step costs, and how fast it serves or trains
    "time and memory": ("prepare", "train", "HNSW build", "serve MiB"),
    "throughput and latency": ("ex/s", "users/s", "query", "p50", "p99"),
}


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Each figure ÷ its value at the smallest scale against interactions, log-log, with the
    line a cost linear in the data would follow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = np.array([r["interactions"] for r in rows], dtype=float)
    fig, axes = plt.subplots(1, 2, figsize=(12, 5), sharey=True)
    colours = plt.get_cmap("tab10")
    for ax, (title, words) in zip(axes, PANELS.items(), strict=True):
        names = [n for n in FIGURES if any(w in n for w in words)]
        for i, name in enumerate(names):
            step, key = FIGURES[name]
            values = np.array([r[step][key] for r in rows], dtype=float)
            ax.plot(
                sizes, values / values[0], marker="os^Dv<>"[i % 7], color=colours(i), label=name
            )
        ax.plot(sizes, sizes / sizes[0], color="black", linestyle="--", label="linear in data")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("interactions")
        ax.set_title(title)
        ax.legend(fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("figure ÷ figure at the smallest scale")
    fig.suptitle("recsys: cost against data size (synthetic, 2 cores)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scales", default="1,4,16")
    parser.add_argument("--base-users", type=int, default=62_500)
    parser.add_argument("--base-books", type=int, default=12_500)
    parser.add_argument("--mean-history", type=int, default=25)
    parser.add_argument("--steps", type=int, default=100, help="training steps timed a scale")
    parser.add_argument("--score-users", type=int, default=20_000)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--only", choices=["prepare"], default=None)
    parser.add_argument("--buckets", type=int, default=16, help="--only prepare: data.buckets")
    parser.add_argument(
        "--memory-cap-mib",
        type=int,
        default=0,
        help="--only prepare: run each preparation in a cgroup capped at this much memory",
    )
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="recsys-scale-"))
    if args.only == "prepare":
        try:
            found = [file_prepare(int(s), args, scratch) for s in args.scales.split(",")]
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        shown = {
            f"{r['scale']}x": {
                "interactions": r.get("interactions", "–"),
                "file MiB": r["file_mib"],
                "in-memory exit": r["in_memory"]["exit"],
                "streamed exit": r["streamed"]["exit"],
                "in-memory s": r["in_memory"]["wall_s"],
                "in-memory MiB": r["in_memory"]["peak_rss_mib"],
                "streamed s": r["streamed"]["wall_s"],
                "streamed MiB": r["streamed"]["peak_rss_mib"],
                "memory streamed ÷ in memory": r["streamed_memory_ratio"],
                "time streamed ÷ in memory": r["streamed_time_ratio"],
            }
            for r in found
        }
        print_table(
            shown, title=f"prepare from a file, in memory and through {args.buckets} buckets"
        )
        payload = {"settings": vars(args), "rows": found}
        print(f"written {write_json(Path(args.out) / 'scale_prepare.json', payload)}")
        return
    rows: list[dict[str, Any]] = []
    try:
        for scale in (int(s) for s in args.scales.split(",")):
            rows.append(one_scale(scale, args, scratch))
            write_json(Path(args.out) / "scale.json", {"settings": vars(args), "rows": rows})
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print_table(
        table(rows), title="growth on synthetic data (2 cores); × = ratio to the first scale"
    )
    plot(rows, Path(args.out) / "scale.png")
    path = write_json(
        Path(args.out) / "scale.json", {"settings": vars(args), "rows": rows, "table": table(rows)}
    )
    print(f"written {path} and {Path(args.out) / 'scale.png'}")


if __name__ == "__main__":
    main()
