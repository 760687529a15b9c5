"""FAISS indexes over L2-normalised book vectors with inner product (= the training score).

The metric is derived from the model's score function, never configured separately: the towers
output unit vectors and score by dot product, so the index uses ``METRIC_INNER_PRODUCT``.
Rows hold real books only; ``book_index`` maps row -> book-vocabulary index.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from recsys.errors import BundleError, RecsysError
from recsys.features.vocab import NUM_RESERVED
from recsys.inference.base import top_k

KINDS = ("flat", "ivf_flat", "hnsw", "ivf_pq")
NPROBES = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1024)
EF_SEARCH = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)


@dataclass(frozen=True)
class IndexSpec:
    """What index to build and how good it must be.

    Attributes:
        kind: ``flat`` (exact), ``ivf_flat``, ``hnsw`` or ``ivf_pq`` (with exact re-ranking).
        nlist: IVF cells (0 = ``4 * sqrt(n)``, bounded so every cell can be trained).
        hnsw_m: HNSW graph degree.
        ef_construction: HNSW build beam.
        pq_m: PQ sub-quantisers (must divide the dimension).
        refine_factor: IVF-PQ candidates re-ranked exactly = ``k * refine_factor``.
        recall_target: tune search parameters to the cheapest meeting this recall@k vs exact.
        recall_k: the ``k`` of that recall.
        seed: for training-sample choice.
    """

    kind: str = "flat"
    nlist: int = 0
    hnsw_m: int = 32
    ef_construction: int = 200
    pq_m: int = 16
    refine_factor: int = 4
    recall_target: float = 0.98
    recall_k: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise RecsysError(f"index kind '{self.kind}' is not one of {KINDS}; set index=<kind>.")

    def factory(self, n: int, dim: int) -> str:
        """The FAISS index_factory string for ``n`` vectors of ``dim``."""
        nlist = self.nlist or int(np.clip(4 * np.sqrt(n), 1, max(n // 39, 1)))
        if self.kind == "flat":
            return "Flat"
        if self.kind == "ivf_flat":
            return f"IVF{nlist},Flat"
        if self.kind == "hnsw":
            return f"HNSW{self.hnsw_m},Flat"
        if dim % self.pq_m:
            raise RecsysError(f"index.pq_m={self.pq_m} must divide the embedding dim {dim}.")
        return f"IVF{nlist},PQ{self.pq_m}x8,RFlat"


@dataclass
class IndexReport:
    """Measured facts written to the manifest."""

    factory: str
    metric: str
    ntotal: int
    dim: int
    search_params: dict[str, int] = field(default_factory=dict)
    recall: float = 1.0
    recall_k: int = 100
    recall_queries: int = 0
    build_seconds: float = 0.0
    tuning: list[dict[str, float]] = field(default_factory=list)


class FaissIndex:
    """A FAISS index plus the row -> book-index map."""

    def __init__(self, index: faiss.Index, book_index: np.ndarray, report: IndexReport) -> None:
        if index.ntotal != book_index.size:
            raise BundleError(
                f"index has {index.ntotal} rows but book_index maps {book_index.size}."
            )
        self.index, self.book_index, self.report = index, book_index.astype(np.int64), report
        self.apply_params(report.search_params)
        # An exact index answers the same for any fetch size, so a batch is one matrix
        # product over its stored vectors instead of FAISS searches grouped by fetch size
        # (each a pass over every vector per query below FAISS's BLAS threshold of 20).
        # Stored transposed, ``[dim, rows]`` contiguous: a product with it took 0.30-0.70 of the
        # time of one with the row-major vectors' transposed view (OpenBLAS, 25k x 128, 1-12
        # queries, two runs of benchmarks/exact_scan.py).
        self._exact: np.ndarray | None = None
        if isinstance(faiss.downcast_index(index), faiss.IndexFlat):
            self._exact = np.ascontiguousarray(index.reconstruct_n(0, index.ntotal).T)
            self._reserved = self.book_index < NUM_RESERVED  # rows never offered
            self._row_of = np.full(int(self.book_index.max(initial=-1)) + 1, -1, np.int64)
            self._row_of[self.book_index] = np.arange(self.book_index.size)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def apply_params(self, params: dict[str, int]) -> None:
        if "nprobe" in params:
            faiss.extract_index_ivf(self.index).nprobe = params["nprobe"]
        inner: Any = faiss.downcast_index(self.index)
        if "efSearch" in params:
            inner.hnsw.efSearch = params["efSearch"]
        if "k_factor" in params:
            inner.k_factor = params["k_factor"]

    def with_added(self, vectors: np.ndarray, book_indices: np.ndarray) -> FaissIndex:
        """A copy with vectors for new books added (rows map to ``book_indices``); the
        original is untouched (it may be shared). Every index type here supports ``add``
        (IVF types assign new vectors to their trained lists)."""
        index = faiss.clone_index(self.index)
        index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        books = np.concatenate([self.book_index, np.asarray(book_indices, np.int64)])
        return FaissIndex(index, books, self.report)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` book indices ``[B, k]`` (-1 when fewer) and inner products."""
        queries = self._queries(queries)
        k = min(k, self.index.ntotal)
        scores, rows = self.index.search(queries, k)
        books = np.where(rows >= 0, self.book_index[np.maximum(rows, 0)], -1)
        return books, scores

    def search_excluding(
        self,
        queries: np.ndarray,
        k: int,
        excluded: list[set[int]],
        allowed: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` books per query, skipping ``excluded`` books (and reserved rows) and, when
        ``allowed`` (bool per book index) is given, books it rules out. Over-fetches until ``k``
        books survive or the index is exhausted; missing slots hold -1 / -inf. Returns raw
        inner products."""
        if self._exact is not None:
            return self._exact_excluding(queries, k, excluded, allowed)
        top = np.full((len(queries), k), -1, dtype=np.int64)
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        total = self.index.ntotal
        # Each row's fetch depends on its own exclusions only (rounded up to a power of two so
        # a batch needs few searches): an approximate index answers differently for another
        # fetch size, and a user's answer must not depend on who else is in the batch.
        fetch = [min(total, k + _pow2(len(e))) for e in excluded]
        pending = list(range(len(queries)))
        while pending:
            groups: dict[int, list[int]] = {}
            for row in pending:
                groups.setdefault(fetch[row], []).append(row)
            pending = []
            for size, rows in groups.items():
                whole = len(rows) == len(queries)  # rows ascending: the batch as it came
                books, sims = self.search(queries if whole else queries[rows], size)
                keep = _admissible(books, [excluded[row] for row in rows], allowed)
                # the first k admissible of each row, in rank order
                kept = keep & (np.cumsum(keep, axis=1) <= k)
                counts = kept.sum(axis=1)
                for j, row in enumerate(rows):
                    if counts[j] < k and size < total:
                        pending.append(row)
                        fetch[row] = min(total, size * 2)
                        continue
                    top[row, : counts[j]] = books[j, kept[j]]
                    scores[row, : counts[j]] = sims[j, kept[j]]
        return top, scores

    def _exact_excluding(
        self,
        queries: np.ndarray,
        k: int,
        excluded: list[set[int]],
        allowed: np.ndarray | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`search_excluding` on an exact index: every row's inner products at once,
        the inadmissible rows set to ``-inf``, then the top ``k``."""
        assert self._exact is not None
        sims = _scan(self._queries(queries), self._exact)  # [B, rows]
        sims[:, self._reserved] = -np.inf
        if allowed is not None:
            sims[:, ~allowed[self.book_index]] = -np.inf
        rows, ids = _excluded_pairs(excluded)
        known = ids < self._row_of.size  # others are in no row
        rows, cols = rows[known], self._row_of[ids[known]]
        sims[rows[cols >= 0], cols[cols >= 0]] = -np.inf
        top, scores = top_k(sims, k)
        books = np.where(top >= 0, self.book_index[np.maximum(top, 0)], -1)
        return books, scores

    def _queries(self, queries: np.ndarray) -> np.ndarray:
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise RecsysError(
                f"queries have shape {queries.shape}; the index expects dim {self.dim}."
            )
        return queries

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.index, str(folder / "books.faiss"))
        np.save(folder / "book_index.npy", self.book_index, allow_pickle=False)
        (folder / "index_spec.json").write_text(json.dumps(asdict(self.report), indent=2))

    @classmethod
    def load(cls, folder: Path, dim: int | None = None) -> FaissIndex:
        for name in ("books.faiss", "book_index.npy", "index_spec.json"):
            if not (folder / name).is_file():
                raise BundleError(
                    f"{folder}: {name} is missing; rebuild the index "
                    "(python index/build.py bundle=...)."
                )
        raw = json.loads((folder / "index_spec.json").read_text())
        report = IndexReport(**raw)
        if report.metric != "inner_product":
            raise BundleError(
                f"{folder}: index metric {report.metric!r} does not match the "
                "model's score (inner product of unit vectors)."
            )
        index = faiss.read_index(str(folder / "books.faiss"))
        if index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise BundleError(f"{folder}: the FAISS file is not an inner-product index.")
        if dim is not None and index.d != dim:
            raise BundleError(
                f"{folder}: index dimension {index.d} does not match the model's "
                f"embedding dimension {dim}; rebuild the index for this model."
            )
        return cls(index, np.load(folder / "book_index.npy", allow_pickle=False), report)


def recall_at_k(approx: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of the exact top-k found by the approximate search."""
    hits = [
        np.intersect1d(a[a >= 0], e[e >= 0]).size / max((e >= 0).sum(), 1)
        for a, e in zip(approx, exact, strict=True)
    ]
    return float(np.mean(hits))


def _candidates(kind: str) -> list[dict[str, int]]:
    if kind in ("ivf_flat", "ivf_pq"):
        return [{"nprobe": p} for p in NPROBES]
    if kind == "hnsw":
        return [{"efSearch": e} for e in EF_SEARCH]
    return [{}]


def build_index(
    vectors: np.ndarray,
    book_index: np.ndarray,
    spec: IndexSpec,
    queries: np.ndarray | None = None,
    search_params: dict[str, int] | None = None,
) -> FaissIndex:
    """Build, then tune search parameters on ``queries`` (e.g. real user vectors).

    Args:
        vectors: book vectors ``[n, D]`` (the towers' unit vectors, or any vectors scored by
            inner product), real books only.
        book_index: book-vocab index of each row ``[n]``.
        spec: index type and recall target.
        queries: ``[q, D]`` vectors to measure recall against exact search (default: a sample
            of the book vectors themselves).
        search_params: fixed search parameters instead of tuning (recall not measured:
            ``report.recall_queries`` stays 0).
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    factory = spec.factory(n, dim)
    started = time.perf_counter()
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        rng = np.random.default_rng(spec.seed)
        sample = vectors[rng.choice(n, min(n, 256 * 1024), replace=False)]
        index.train(sample)
    inner: Any = faiss.downcast_index(index)
    if spec.kind == "hnsw":
        inner.hnsw.efConstruction = spec.ef_construction
    index.add(vectors)
    if spec.kind == "ivf_pq":
        inner.k_factor = spec.refine_factor
    build_seconds = time.perf_counter() - started
    report = IndexReport(
        factory=factory,
        metric="inner_product",
        ntotal=n,
        dim=dim,
        recall_k=min(spec.recall_k, n),
        build_seconds=build_seconds,
    )
    if search_params is not None:
        report.search_params = dict(search_params)
    wrapped = FaissIndex(index, book_index, report)
    if search_params is None:
        tune(wrapped, vectors, spec, queries)
    return wrapped


def tune(
    index: FaissIndex, vectors: np.ndarray, spec: IndexSpec, queries: np.ndarray | None
) -> None:
    """Pick the cheapest search parameters meeting ``spec.recall_target`` (or the best seen)."""
    rng = np.random.default_rng(spec.seed)
    if queries is None:
        queries = vectors[rng.choice(len(vectors), min(len(vectors), 1000), replace=False)]
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    k = index.report.recall_k
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    _, truth = exact.search(queries, k)
    truth = index.book_index[truth]
    best: tuple[float, dict[str, int]] = (-1.0, {})
    tuning: list[dict[str, Any]] = []
    for params in _candidates(spec.kind):
        if "nprobe" in params and params["nprobe"] > faiss.extract_index_ivf(index.index).nlist:
            break
        index.apply_params(params)
        approx, _ = index.search(queries, k)
        recall = recall_at_k(approx, truth)
        tuning.append({**params, "recall": recall})
        if recall > best[0]:
            best = (recall, params)
        if recall >= spec.recall_target:
            best = (recall, params)
            break
    index.apply_params(best[1])
    index.report.search_params = best[1]
    index.report.recall = best[0]
    index.report.recall_queries = len(queries)
    index.report.tuning = tuning


def _admissible(
    books: np.ndarray, excluded: list[set[int]], allowed: np.ndarray | None
) -> np.ndarray:
    """``[R, size]`` bool: a real book (not -1, not a reserved row), not in its row's
    ``excluded`` set and, with ``allowed``, allowed — one vectorised pass over the batch."""
    keep = books >= NUM_RESERVED
    if allowed is not None:
        keep &= allowed[np.maximum(books, 0)]
    rows, ids = _excluded_pairs(excluded)
    if ids.size:
        width = np.int64(max(int(books.max(initial=0)), int(ids.max(initial=0))) + 1)
        keys = np.arange(len(books), dtype=np.int64)[:, None] * width + books
        keep &= ~np.isin(keys, rows * width + ids)
    return keep


def _scan(queries: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """``queries @ columns`` (``columns``: the vectors transposed, ``[dim, rows]``). Up to three
    queries, one matrix-vector product each; from four, the batch padded with zero rows to a
    multiple of 4: OpenBLAS's matrix kernels for 2, 3, 5-7 rows took more time than for 4 or
    8, and one query's product costs about a quarter of four's, so two took 0.46 and three
    0.75 of the padded product, 0.67 and 0.96 with the vectors out of the caches as in
    serving (25k x 128 floats; ``benchmarks/exact_scan.py [--cold]``)."""
    batch = len(queries)
    if batch < 4:
        out = np.empty((batch, columns.shape[1]), dtype=np.result_type(queries, columns))
        for row in range(batch):
            np.matmul(queries[row], columns, out=out[row])
        return out
    if batch % 4 == 0:
        return queries @ columns
    padded = np.zeros((batch + (-batch) % 4, queries.shape[1]), dtype=queries.dtype)
    padded[:batch] = queries
    return (padded @ columns)[:batch]


def _excluded_pairs(excluded: list[set[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(row, book) of every excluded book, flattened; negative ids (never a result) left out."""
    lengths = [len(e) for e in excluded]
    ids = np.fromiter((b for e in excluded for b in e), dtype=np.int64, count=sum(lengths))
    rows = np.repeat(np.arange(len(excluded), dtype=np.int64), lengths)
    return rows[ids >= 0], ids[ids >= 0]


def _pow2(n: int) -> int:
    """The smallest power of two >= ``n`` (0 for 0)."""
    return 0 if n <= 0 else 1 << (n - 1).bit_length()
