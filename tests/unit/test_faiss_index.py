"""FAISS indexes against brute force on small clustered data."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from recsys.errors import BundleError, RecsysError
from recsys.index.faiss_index import FaissIndex, IndexSpec, build_index, recall_at_k


def clustered(n: int, dim: int = 32, clusters: int = 20, seed: int = 0) -> np.ndarray:
    """Unit vectors around a few centres (like learned embeddings; never uniform noise)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    points = centres[rng.integers(0, clusters, n)] + 0.35 * rng.normal(size=(n, dim))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    vectors = clustered(4000)
    queries = clustered(200, seed=1)
    book_index = np.arange(2, 4002)
    return vectors, book_index, queries


def brute_force(
    vectors: np.ndarray, book_index: np.ndarray, queries: np.ndarray, k: int
) -> np.ndarray:
    order = np.argsort(-(queries @ vectors.T), axis=1)[:, :k]
    return book_index[order]


@pytest.mark.parametrize("kind", ["flat", "ivf_flat", "hnsw", "ivf_pq"])
def test_index_types_meet_recall_target(kind: str, data: tuple[np.ndarray, ...]) -> None:
    vectors, book_index, queries = data
    spec = IndexSpec(kind=kind, recall_target=0.95, recall_k=50, pq_m=8)
    index = build_index(vectors, book_index, spec, queries)
    assert index.index.ntotal == len(vectors)
    assert index.index.metric_type == faiss.METRIC_INNER_PRODUCT
    books, scores = index.search(queries, 50)
    truth = brute_force(vectors, book_index, queries, 50)
    measured = recall_at_k(books, truth)
    assert measured >= 0.95
    assert index.report.recall == pytest.approx(measured)
    if kind == "flat":
        assert measured == 1.0
        np.testing.assert_array_equal(books, truth)
    else:
        assert index.report.search_params  # tuned
    assert (np.diff(scores, axis=1) <= 1e-5).all()


def test_tuning_picks_cheapest_setting(data: tuple[np.ndarray, ...]) -> None:
    vectors, book_index, queries = data
    index = build_index(
        vectors, book_index, IndexSpec(kind="ivf_flat", recall_target=0.9, recall_k=20), queries
    )
    tried = index.report.tuning
    assert tried[-1]["recall"] >= 0.9
    assert all(step["recall"] < 0.9 for step in tried[:-1])
    assert index.report.search_params == {"nprobe": tried[-1]["nprobe"]}


def test_save_load_round_trip(data: tuple[np.ndarray, ...], tmp_path: Path) -> None:
    vectors, book_index, queries = data
    index = build_index(vectors, book_index, IndexSpec(kind="hnsw", recall_k=20), queries)
    index.save(tmp_path)
    loaded = FaissIndex.load(tmp_path, dim=vectors.shape[1])
    assert loaded.report.search_params == index.report.search_params
    np.testing.assert_array_equal(loaded.search(queries, 10)[0], index.search(queries, 10)[0])


def test_refusals(data: tuple[np.ndarray, ...], tmp_path: Path) -> None:
    vectors, book_index, queries = data
    index = build_index(vectors, book_index, IndexSpec(kind="flat"), queries)
    index.save(tmp_path)
    with pytest.raises(BundleError, match=r"dimension 32 does not match.*64"):
        FaissIndex.load(tmp_path, dim=64)
    with pytest.raises(RecsysError, match="expects dim 32"):
        index.search(np.zeros((1, 8), dtype=np.float32), 5)
    l2 = faiss.IndexFlatL2(vectors.shape[1])
    l2.add(vectors)
    faiss.write_index(l2, str(tmp_path / "books.faiss"))
    with pytest.raises(BundleError, match="not an inner-product index"):
        FaissIndex.load(tmp_path)
    (tmp_path / "books.faiss").unlink()
    with pytest.raises(BundleError, match=r"books.faiss is missing.*index/build.py"):
        FaissIndex.load(tmp_path)
    with pytest.raises(RecsysError, match="not one of"):
        IndexSpec(kind="annoy")
    with pytest.raises(RecsysError, match="must divide"):
        IndexSpec(kind="ivf_pq", pq_m=7).factory(1000, 32)


def test_excluding_search_does_not_depend_on_the_batch(data: tuple[np.ndarray, ...]) -> None:
    """An approximate index answers differently for another fetch size: a row's answer must
    depend on its own exclusions only, never on the other rows of its batch."""
    vectors, book_index, queries = data
    index = build_index(vectors, book_index, IndexSpec(kind="hnsw", recall_k=20), queries)
    faiss.downcast_index(index.index).hnsw.efSearch = 16
    rng = np.random.default_rng(3)
    sizes = (0, 3, 40, 300)
    excluded = [{int(b) for b in rng.choice(book_index, size=n, replace=False)} for n in sizes]
    # a zero query ties every book (an empty history's MF vector): the hardest case
    batch = np.vstack([np.zeros((1, queries.shape[1]), np.float32), queries[:3]])
    together, scores = index.search_excluding(batch, 25, excluded)
    for row in range(4):
        alone, alone_scores = index.search_excluding(batch[row : row + 1], 25, [excluded[row]])
        np.testing.assert_array_equal(together[row], alone[0])
        np.testing.assert_allclose(scores[row], alone_scores[0])
        assert not set(together[row].tolist()) & excluded[row]


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_excluding_search_keeps_the_first_admissible_books_in_rank_order(
    kind: str, data: tuple[np.ndarray, ...]
) -> None:
    """The vectorised filter of the over-fetch equals the per-row definition: the index's
    results in rank order, less reserved rows, each row's own exclusions (ids beyond the table
    or negative ones included, which must not touch another row) and disallowed books."""
    vectors, book_index, queries = data
    index = build_index(vectors, book_index, IndexSpec(kind=kind, recall_k=20), queries)
    rng = np.random.default_rng(7)
    batch = queries[:6]
    excluded = [
        {int(b) for b in rng.choice(book_index, size=n, replace=False)} | extra
        for n, extra in zip(
            (0, 5, 50, 400, 10, 1), ({-1}, {10**9}, set(), {0, 1}, {-7}, set()), strict=True
        )
    ]
    allowed = rng.random(int(book_index.max()) + 1) < 0.7
    for mask in (None, allowed):
        top, scores = index.search_excluding(batch, 30, excluded, mask)
        for row in range(len(batch)):
            # the same fetches as the index makes (k + the exclusions' power of two, doubled
            # until k survive: an approximate index answers per fetch size)
            size = 30 + (1 << (len(excluded[row]) - 1).bit_length() if excluded[row] else 0)
            while True:
                size = min(size, index.index.ntotal)
                fetched, sims = index.search(batch[row : row + 1], size)
                expected = [
                    (b, s)
                    for b, s in zip(fetched[0].tolist(), sims[0].tolist(), strict=True)
                    if b >= 2 and b not in excluded[row] and (mask is None or mask[b])
                ][:30]
                if len(expected) == 30 or size == index.index.ntotal:
                    break
                size *= 2
            assert top[row].tolist() == [b for b, _ in expected]
            np.testing.assert_allclose(scores[row], [s for _, s in expected], rtol=1e-6)


def test_exact_index_answers_a_batch_at_once_as_brute_force_would(
    data: tuple[np.ndarray, ...],
) -> None:
    """A flat index scores the whole batch in one product: the answer is the brute-force
    order less reserved rows, exclusions and disallowed books, for books added after the build
    too; a row with fewer admissible books than ``k`` is padded with -1 / -inf."""
    vectors, book_index, queries = data
    index = build_index(vectors[:300], book_index[:300], IndexSpec(kind="flat"), queries)
    added = index.with_added(
        vectors[300:310], np.array([0, 9000, 9001, 9002, 9003, 9004, 9005, 9006, 9007, 9008])
    )
    books = np.concatenate([book_index[:300], [0, *range(9000, 9009)]])
    stored = vectors[:310]
    allowed = np.ones(9009, dtype=bool)
    allowed[book_index[:300:3]] = False
    excluded = [{9000, 9001, int(book_index[5])}, set(), {int(b) for b in book_index[:300]}]
    batch = queries[:3]
    top, scores = added.search_excluding(batch, 20, excluded, allowed)
    for row in range(3):
        sims = stored @ batch[row]
        order = [
            i
            for i in np.argsort(-sims, kind="stable")
            if books[i] >= 2 and books[i] not in excluded[row] and allowed[books[i]]
        ][:20]
        expected = [int(books[i]) for i in order]
        assert top[row][: len(expected)].tolist() == expected
        np.testing.assert_allclose(scores[row][: len(expected)], sims[order], rtol=1e-5)
        assert (top[row][len(expected) :] == -1).all()
        assert np.isneginf(scores[row][len(expected) :]).all()
    assert len([b for b in top[2] if b >= 0]) == 9  # only the added books, less the reserved 0
    alone, _ = added.search_excluding(batch[1:2], 20, [excluded[1]], allowed)
    np.testing.assert_array_equal(alone[0], top[1])


def test_the_padded_scan_scores_as_the_plain_product() -> None:
    """The exact path scans up to three queries one product each and pads 5-7 to a multiple of
    4 rows, for faster kernels; the scores and their order are the plain product's."""
    from recsys.index.faiss_index import _scan

    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((500, 16)).astype(np.float32)
    for batch in range(1, 10):
        queries = rng.standard_normal((batch, 16)).astype(np.float32)
        scores = _scan(queries, np.ascontiguousarray(vectors.T))
        assert scores.shape == (batch, 500)
        np.testing.assert_allclose(scores, queries @ vectors.T, rtol=1e-5, atol=1e-5)
        for row in range(batch):  # each row as the row alone would score it
            np.testing.assert_allclose(scores[row], vectors @ queries[row], rtol=1e-5, atol=1e-5)
