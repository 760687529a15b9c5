"""The exact two-tower scan's kernel: the product of a batch of queries with a bundle's book
vectors, as the exact index stores them (transposed, ``[dim, rows]`` contiguous) and scans
them (``_scan``: a matrix-vector product per query up to three, the batch padded to a multiple
of 4 from four), against the row-major vectors' transposed view, the transposed copy unpadded,
and the transposed copy padded at every size (the code before 2026-12-03).

    python benchmarks/exact_scan.py [--bundle artifacts/bundles/amazon_book] [--batches 1-12]
        [--cold]

Without a bundle (or with ``--rows/--dim``) it scans random vectors of that shape. Each cell
is the lower quartile of ``--repeats`` timings (this machine is shared; the quartile is
steadier than the mean). ``--cold`` reads 64 MB before each timing, so the vectors come from
memory as in serving, where the rest of the model path evicts them. Prints a table with the
served kernel's ratio to the padded product and to the transposed copy unpadded; writes
benchmarks/results/exact_scan.json.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from recsys.index.faiss_index import _scan
from recsys.report import print_table, write_json


def _quartile_ms(fn: Callable[[], object], repeats: int, flush: np.ndarray | None = None) -> float:
    times = []
    for _ in range(repeats):
        if flush is not None:
            flush.sum()  # the vectors out of the CPU caches, as other work leaves them in serving
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return float(sorted(times)[repeats // 4] * 1000)


def _padded(queries: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """The product with the batch padded to a multiple of 4 from two queries up (the served
    kernel before 2026-12-03, at every batch size)."""
    batch = len(queries)
    if batch < 2 or batch % 4 == 0:
        return queries @ columns
    padded = np.zeros((batch + (-batch) % 4, queries.shape[1]), dtype=queries.dtype)
    padded[:batch] = queries
    return (padded @ columns)[:batch]


def _vectors(args: argparse.Namespace) -> tuple[np.ndarray, str]:
    """The bundle's book embeddings (what its exact index holds), or random vectors."""
    if args.rows is None and Path(args.bundle).exists():
        from recsys.bundle.reader import load_bundle

        loaded = load_bundle(args.bundle)
        vectors = np.ascontiguousarray(np.asarray(loaded.book_embeddings, dtype=np.float32))
        return vectors, f"{loaded.version} book embeddings"
    rng = np.random.default_rng(0)
    rows, dim = args.rows or 24_915, args.dim
    return rng.standard_normal((rows, dim)).astype(np.float32), f"random {rows} x {dim}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", default="artifacts/bundles/amazon_book")
    parser.add_argument("--rows", type=int, default=None, help="random vectors: how many")
    parser.add_argument("--dim", type=int, default=128, help="random vectors: dimension")
    parser.add_argument("--batches", default="1-12", help="a range a-b or a comma list")
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument(
        "--cold", action="store_true", help="read 64 MB between timings (the caches flushed)"
    )
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    if "-" in args.batches:
        low, high = (int(x) for x in args.batches.split("-"))
        sizes = list(range(low, high + 1))
    else:
        sizes = [int(x) for x in args.batches.split(",")]
    vectors, source = _vectors(args)
    columns = np.ascontiguousarray(vectors.T)
    rng = np.random.default_rng(1)
    flush = np.ones(16_000_000, dtype=np.float32) if args.cold else None
    rows = {}
    for size in sizes:
        queries = rng.standard_normal((size, vectors.shape[1])).astype(np.float32)
        view = _quartile_ms(lambda q=queries: q @ vectors.T, args.repeats, flush)
        plain = _quartile_ms(lambda q=queries: q @ columns, args.repeats, flush)
        padded = _quartile_ms(lambda q=queries: _padded(q, columns), args.repeats, flush)
        served = _quartile_ms(lambda q=queries: _scan(q, columns), args.repeats, flush)
        rows[f"{size} queries"] = {
            "view_ms": view,  # the row-major vectors' transposed view
            "transposed_ms": plain,  # the transposed copy, one product
            "padded_ms": padded,  # ... padded to a multiple of 4 (the code before)
            "served_ms": served,  # what the exact index runs now
            "served_vs_padded": served / padded,
            "served_vs_transposed": served / plain,
        }
    title = f"exact scan, {source}{', caches flushed' if args.cold else ''}"
    print_table(rows, title=title)
    payload = {"source": source, "shape": list(vectors.shape), "cold": args.cold, "rows": rows}
    print(f"written {write_json(Path(args.out) / 'exact_scan.json', payload)}")


if __name__ == "__main__":
    main()
