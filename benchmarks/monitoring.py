"""What monitoring adds to each response: list diversity, catalogue coverage and the drift
windows (the work ``ServingCore`` does per computed list), and the cost of a scrape.

    python benchmarks/monitoring.py [--books 100000] [--out benchmarks/results]

In process, no data needed: a catalogue of ``--books`` books by 20,000 authors, lists of
10, 20 and 100 random books. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import os
import random
import time
import timeit
from pathlib import Path
from types import SimpleNamespace
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
from prometheus_client import generate_latest

from recsys.drift import Reference, TrainingSummary
from recsys.report import print_table, write_json
from recsys.serving.drift import DriftCollector, DriftMonitor
from recsys.serving.metrics import Metrics
from recsys.serving.personalised import Answer
from recsys.serving.quality import Coverage, QualityCollector, author_diversity


def setup(n_books: int) -> tuple[Any, Metrics, Coverage, DriftMonitor]:
    authors = [None, None] + [f"author {i % 20_000}" for i in range(n_books)]
    catalogue = SimpleNamespace(authors=authors, listed=np.ones(n_books + 2, dtype=bool))
    users = SimpleNamespace(lookup={f"u{i}": i + 2 for i in range(100_000)})
    books = SimpleNamespace(lookup={f"b{i}": i + 2 for i in range(n_books)})
    rng = np.random.default_rng(0)
    summary = TrainingSummary(
        {
            "event_type": Reference.categorical(("read", "view"), ["read"]),
            "unknown_user": Reference.categorical(("known", "unknown"), ["known"]),
            "unknown_book": Reference.categorical(("known", "unknown"), ["known"]),
            "history_length": Reference.numeric(rng.integers(1, 200, 1000)),
            "top_score": Reference.numeric(rng.random(1000)),
        }
    )
    state = SimpleNamespace(users=users, books=books)
    drift = DriftMonitor()
    bundle: Any = SimpleNamespace(training_summary=summary, state=state, version="v")
    drift.rebase(bundle)
    return catalogue, Metrics(), Coverage(), drift


def per_response(n_books: int, k: int, repeat: int = 5, number: int = 20_000) -> float:
    """Microseconds of monitoring work per computed list of ``k`` books (best of ``repeat``)."""
    catalogue, metrics, coverage, drift = setup(n_books)
    books = random.Random(k).sample(range(2, n_books + 2), k)
    answer = Answer(books, [1.0] * k, [], "personalized", from_model=k, history_length=20)

    def work() -> None:
        drift.request("u42")
        diversity = author_diversity([catalogue.authors[b] for b in answer.books])
        metrics.diversity.labels("user", "v").observe(diversity or 0.0)
        coverage.add("v", catalogue, answer.books, time.time())
        drift.answer(answer)

    return min(timeit.repeat(work, number=number, repeat=repeat)) / number * 1e6


def scrape_ms(n_books: int, covered: int) -> float:
    """Milliseconds of one ``/metrics`` rendering with full drift windows and ``covered``
    books in the coverage window."""
    catalogue, metrics, coverage, drift = setup(n_books)
    answer = Answer([2], [0.5], [], "personalized", from_model=1, history_length=5)
    for _ in range(drift.window):
        drift.request("u1")
        drift.answer(answer)
        drift.event("view", "b1")
    coverage.add("v", catalogue, range(2, covered + 2), time.time())
    metrics.registry.register(DriftCollector(drift))
    metrics.registry.register(QualityCollector(coverage, lambda: []))
    return min(timeit.repeat(lambda: generate_latest(metrics.registry), number=10, repeat=3)) * 100


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--books", type=int, default=100_000)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    rows: dict[str, dict[str, Any]] = {
        f"list of {k}": {"us per response": per_response(args.books, k)} for k in (10, 20, 100)
    }
    covered = min(50_000, args.books)
    rows[f"scrape, {covered} books covered"] = {"ms per scrape": scrape_ms(args.books, covered)}
    print_table(rows, title=f"monitoring overhead, {args.books} books")
    write_json(args.out / "monitoring.json", {"books": args.books, "rows": rows})


if __name__ == "__main__":
    main()
