"""The vectorised candidate generator equals the per-row definition it replaced (merge order,
deduplication, exclusions, per-source ranks and scores)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp

from recsys.bundle.reader import load_bundle
from recsys.features.vocab import NUM_RESERVED
from recsys.inference.two_stage import CandidateGenerator

pytestmark = pytest.mark.integration


def _sparse_lists(scores: sp.csr_matrix, n: int, excluded: list[set[int]]) -> list[list[int]]:
    lists = []
    for row in range(scores.shape[0]):
        start, end = scores.indptr[row], scores.indptr[row + 1]
        cols, vals = scores.indices[start:end], scores.data[start:end]
        ranked = cols[np.lexsort((cols, -vals))]
        keep = (ranked >= NUM_RESERVED) & ~np.isin(ranked, list(excluded[row]))
        lists.append(ranked[keep][:n].tolist())
    return lists


def _reference(
    gen: CandidateGenerator, vectors: np.ndarray, history: sp.csr_matrix, excluded: list[set[int]]
) -> dict[str, np.ndarray]:
    """Each row on its own, with Python lists: the definition."""
    tt_books, _ = gen.retriever.search(vectors, gen.n_retrieval, excluded)
    binary = (history > 0).astype(np.float32)
    co = sp.csr_matrix(binary @ gen.cooccurrence.neighbours)
    sources = {"retrieval": [[int(b) for b in row if b >= 0] for row in tt_books]}
    sources["ease"] = (
        _sparse_lists(sp.csr_matrix(binary @ gen.ease.weights), gen.n_ease, excluded)
        if gen.ease is not None
        else [[] for _ in excluded]
    )
    if gen.mf is not None:
        mf_top = gen.mf.top_books(gen.mf.user_vectors(history), gen.n_mf, excluded)
        sources["mf"] = [[int(b) for b in row if b >= 0] for row in mf_top]
    else:
        sources["mf"] = [[] for _ in excluded]
    sources["cooc"] = _sparse_lists(co, gen.n_cooc, excluded)
    sources["series"] = [[] for _ in excluded]
    if gen.works is not None and gen.n_series > 0:
        for row in range(history.shape[0]):
            read = history.indices[history.indptr[row] : history.indptr[row + 1]].tolist()
            nexts = gen.works.next_volumes(read, gen.n_series) if read else []
            sources["series"][row] = [b for b in nexts if b not in excluded[row]]
    sizes = {"retrieval": gen.n_retrieval, "ease": gen.n_ease, "mf": gen.n_mf, "cooc": gen.n_cooc}
    batch, width = len(vectors), gen.max_candidates
    out = {"books": np.full((batch, width), -1)}
    out.update({f"{s}_rank": np.full((batch, width), float(n)) for s, n in sizes.items()})
    for row in range(batch):
        order = ("retrieval", "series", "ease", "mf", "cooc")
        joined = [b for s in order for b in sources[s][row]]
        merged = list(dict.fromkeys(joined))[:width]
        out["books"][row, : len(merged)] = merged
        for name, n in sizes.items():
            where = {b: i for i, b in enumerate(sources[name][row])}
            out[f"{name}_rank"][row, : len(merged)] = [where.get(b, n) for b in merged]
    safe = np.maximum(out["books"], 0)
    out["cooc_score"] = np.where(
        out["books"] >= 0, np.take_along_axis(co.toarray(), safe, 1), 0
    ).astype(np.float32)
    return out


def test_generate_equals_the_per_row_definition(trained_bundle: dict[str, Any]) -> None:
    bundle = load_bundle(trained_bundle["bundle"])
    generator = bundle.two_stage(use_index=False).generator
    assert generator.mf is not None
    assert generator.ease is not None
    assert generator.works is not None  # synthetic books have series: next in series too
    data = trained_bundle["data"]
    users = np.unique(data.train.get_column("user_idx").to_numpy())[:80]
    history = data.matrix("train")[users]
    rng = np.random.default_rng(0)
    excluded = []
    for row in range(len(users)):
        seen = set(history.indices[history.indptr[row] : history.indptr[row + 1]].tolist())
        extra = set(rng.integers(NUM_RESERVED, history.shape[1], size=5).tolist())
        excluded.append(seen | extra if row % 3 else seen)
    excluded[0] = set()  # a row with nothing excluded
    feats = generator.retriever.features_from_matrix(users, history)
    vectors = generator.retriever.encode(feats)
    got = generator.generate(vectors, history, excluded)
    expected = _reference(generator, vectors, history, excluded)
    np.testing.assert_array_equal(got.books, expected["books"])
    for name in ("retrieval", "ease", "mf", "cooc"):
        np.testing.assert_array_equal(getattr(got, f"{name}_rank"), expected[f"{name}_rank"])
    np.testing.assert_allclose(got.cooc_score, expected["cooc_score"], rtol=1e-6)
    assert (got.books >= 0).sum() > len(users) * 10  # lists are not trivially empty
    for row, books in enumerate(got.books):
        assert not set(books[books >= 0].tolist()) & excluded[row]
