"""Two-stage recommendation: candidates from two-tower retrieval, EASE, matrix factorisation
and co-occurrence, then the ranker orders them. Every stage's output can be inspected, and each
recommendation carries a short reason."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import numpy as np
import polars as pl
import scipy.sparse as sp
import torch
from torch import nn

from recsys.data.works import Works
from recsys.features.pipeline import BookFeatures
from recsys.features.ranking import FEATURES, Candidates, pair_features
from recsys.features.vocab import NUM_RESERVED
from recsys.inference.base import PADDING, find_sorted, row_dots
from recsys.inference.cooccurrence import CooccurrenceRecommender
from recsys.inference.ease import EaseRecommender
from recsys.inference.mf import MatrixFactorisation
from recsys.inference.two_tower import TwoTowerRecommender


def _row_keys(books: np.ndarray, stride: int) -> np.ndarray:
    """``row * stride + book`` of a ``[B, K]`` book array (int64)."""
    return np.arange(len(books), dtype=np.int64)[:, None] * stride + books


def _excluded_keys(excluded: list[set[int]], stride: int) -> np.ndarray:
    """Sorted ``row * stride + book`` keys of every excluded book."""
    parts = [
        row * stride + np.fromiter(books, dtype=np.int64, count=len(books))
        for row, books in enumerate(excluded)
        if books
    ]
    return np.sort(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)


def _contains(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Whether each of ``keys`` is in ``sorted_keys``."""
    return find_sorted(sorted_keys, keys)[1]


def _pack(rows: np.ndarray, values: np.ndarray, batch: int, n: int) -> np.ndarray:
    """``[batch, n]`` array (``PADDING`` filled) holding each row's first ``n`` of ``values``;
    ``rows`` must be sorted (stable within a row)."""
    out = np.full((batch, n), PADDING, dtype=np.int64)
    if rows.size == 0 or n <= 0:
        return out
    starts = np.searchsorted(rows, np.arange(batch))
    position = np.arange(rows.size) - starts[rows]
    keep = position < n
    out[rows[keep], position[keep]] = values[keep]
    return out


def _compact(books: np.ndarray) -> np.ndarray:
    """Each row's books moved left in order, ``PADDING`` after them."""
    rows, columns = np.nonzero(books >= 0)
    return _pack(rows, books[rows, columns], books.shape[0], books.shape[1])


def _sparse_top(scores: sp.csr_matrix, n: int, excluded: np.ndarray) -> np.ndarray:
    """``[B, n]`` each row's top-``n`` books of a sparse score matrix, best first, reserved
    books and ``excluded`` keys (:func:`_excluded_keys`) left out, ties by book index;
    ``PADDING`` where a row has fewer."""
    batch, stride = scores.shape
    if not scores.has_sorted_indices:
        scores = scores.sorted_indices()  # books ascending within a row: the tie order
    rows = np.repeat(np.arange(batch, dtype=np.int64), np.diff(scores.indptr))
    books = scores.indices.astype(np.int64)
    keep = (books >= NUM_RESERVED) & ~_contains(excluded, rows * stride + books)
    rows, books, values = rows[keep], books[keep], scores.data[keep]
    # one stable sort of (row, score descending) keys; 4-6x faster than a three-key lexsort
    order = np.argsort(_descending_keys(rows, values), kind="stable")
    return _pack(rows[order], books[order], batch, n)


def _descending_keys(rows: np.ndarray, values: np.ndarray) -> np.ndarray:
    """uint64 keys ordering by row, then by value descending: the row in the high 32 bits
    and the float32 value's bits, mapped to an order-preserving unsigned int and inverted,
    in the low 32 (-0.0 counts as 0.0)."""
    bits = (values.astype(np.float32) + np.float32(0.0)).view(np.uint32)
    ascending = np.where(bits >> np.uint32(31) == 1, ~bits, bits | np.uint32(0x80000000))
    return (rows.astype(np.uint64) << np.uint64(32)) | (~ascending).astype(np.uint64)


def _merge(lists: list[np.ndarray], width: int) -> np.ndarray:
    """``[B, width]``: the sources' lists concatenated in order, each book kept at its first
    occurrence, ``PADDING`` after the last."""
    joined = np.concatenate(lists, axis=1)
    batch, total = joined.shape
    valid = joined >= 0
    # padding gets keys of its own (past every book) so it never collides
    stride = int(max(joined.max(initial=0), 0)) + 1 + total
    keys = np.where(valid, joined, stride - total + np.arange(total))
    _, first = np.unique(_row_keys(keys, stride).ravel(), return_index=True)
    is_first = np.zeros(batch * total, dtype=bool)
    is_first[first] = True
    keep = (is_first & valid.ravel()).reshape(batch, total)
    rows, columns = np.nonzero(keep)  # row-major: rows sorted, list order within a row
    return _pack(rows, joined[rows, columns], batch, width)


def _ranks_in(merged: np.ndarray, source: np.ndarray, absent: int) -> np.ndarray:
    """``[B, width]`` float32 position of each merged book in its row's ``source`` list
    (``absent`` where it is not there, or padding)."""
    rows, columns = np.nonzero(source >= 0)
    stride = int(max(merged.max(initial=0), source.max(initial=0))) + 1
    keys = rows.astype(np.int64) * stride + source[rows, columns]
    order = np.argsort(keys, kind="stable")
    keys, positions = keys[order], columns[order]
    at, found = find_sorted(keys, _row_keys(np.maximum(merged, 0), stride))
    found &= merged >= 0
    out = np.full(merged.shape, absent, dtype=np.float32)
    out[found] = positions[at[found]]
    return out


def sparse_values(scores: sp.csr_matrix, books: np.ndarray) -> np.ndarray:
    """``[B, K]`` entries ``scores[row, books[row, k]]`` (0 where absent) of a ``[B, N]`` CSR
    matrix: one sorted lookup of (row, book) keys instead of scipy's fancy indexing."""
    batch, width = books.shape
    if not scores.has_sorted_indices:
        scores = scores.sorted_indices()
    stride = scores.shape[1]
    rows = np.repeat(np.arange(batch, dtype=np.int64), np.diff(scores.indptr))
    at, found = find_sorted(rows * stride + scores.indices, _row_keys(books, stride).ravel())
    values = np.zeros(batch * width, dtype=np.float32)
    values[found] = scores.data[at[found]]
    return values.reshape(batch, width)


@dataclass
class CandidateGenerator:
    """Union of the sources, deduplicated, seen books excluded, at most ``max_candidates``.

    Two-tower candidates come first (in retrieval order), then "next in series" ones, then
    EASE-only, MF-only and co-occurrence-only ones. Without ``mf`` / ``ease`` (or with
    ``n_mf=0`` / ``n_ease=0``) that source gives no list and its features are zero.

    ``works`` (books' works and series) with ``n_series > 0`` adds the series source: for
    each series the reader has read a volume of, its earliest unread volume (at most
    ``n_series``, the series read most recently first). It has no features of its own: the
    ranker scores those books from what the other sources say about them.

    ``social`` (serving only: ``[B, N]``, how many of the readers a reader follows read each
    book) adds the "friends are reading" source after the series one: each row's
    ``n_social`` books most read by the people they follow, unread. No features of its own
    either (the ranker was trained without it).
    """

    retriever: TwoTowerRecommender
    cooccurrence: CooccurrenceRecommender
    n_retrieval: int = 150
    n_cooc: int = 100
    max_candidates: int = 200
    mf: MatrixFactorisation | None = None
    n_mf: int = 0
    ease: EaseRecommender | None = None  # pruned (sparse) weights
    n_ease: int = 0
    works: Works | None = None
    n_series: int = 0
    n_social: int = 20  # "friends are reading": at most this many books per reader

    def __post_init__(self) -> None:
        if self.ease is not None and not self.ease.sparse:
            raise ValueError("the EASE candidate source takes pruned weights (ease.pruned(k))")

    def _mf_lists(
        self, history: sp.csr_matrix, excluded: list[set[int]]
    ) -> tuple[np.ndarray | None, np.ndarray]:
        """MF fold-in vectors ``[B, F]`` and each row's top-``n_mf`` unseen books."""
        batch = history.shape[0]
        if self.mf is None or self.n_mf <= 0:
            return None, np.full((batch, 0), PADDING, dtype=np.int64)
        vectors = self.mf.user_vectors(history)
        return vectors, _compact(self.mf.top_books(vectors, self.n_mf, excluded))

    def _series_lists(self, history: sp.csr_matrix, excluded: list[set[int]]) -> np.ndarray:
        """Each row's next unread volumes (``[B, n_series]``, padded)."""
        batch = history.shape[0]
        if self.works is None or self.n_series <= 0:
            return np.full((batch, 0), PADDING, dtype=np.int64)
        out = np.full((batch, self.n_series), PADDING, dtype=np.int64)
        for row in range(batch):
            books = history.indices[history.indptr[row] : history.indptr[row + 1]]
            if books.size == 0:
                continue
            picked = [
                b
                for b in self.works.next_volumes(books.tolist(), self.n_series)
                if b not in excluded[row] and b < history.shape[1]
            ]
            out[row, : len(picked)] = picked
        return out

    def generate(
        self,
        vectors: np.ndarray,
        history: sp.csr_matrix,
        excluded: list[set[int]],
        social: sp.csr_matrix | None = None,
    ) -> Candidates:
        batch, width = len(vectors), self.max_candidates
        tt_books, _ = self.retriever.search(vectors, self.n_retrieval, excluded)
        tt_books = _compact(np.asarray(tt_books, dtype=np.int64))
        binary = (history > 0).astype(np.float32)
        excluded_keys = _excluded_keys(excluded, binary.shape[1])
        co = sp.csr_matrix(binary @ self.cooccurrence.neighbours)  # (B, N) sparse
        co.sort_indices()  # once, for both _sparse_top and sparse_values
        co_books = _sparse_top(co, self.n_cooc, excluded_keys)
        ease_scores = None if self.ease is None else sp.csr_matrix(binary @ self.ease.weights)
        if ease_scores is not None:
            ease_scores.sort_indices()
        ease_books = (
            np.full((batch, 0), PADDING, dtype=np.int64)
            if ease_scores is None
            else _sparse_top(ease_scores, self.n_ease, excluded_keys)
        )
        mf_vectors, mf_books = self._mf_lists(history, excluded)
        series_books = self._series_lists(history, excluded)
        lists = [tt_books, series_books, ease_books, mf_books, co_books]
        if social is not None and social.nnz and self.n_social > 0:
            social = sp.csr_matrix(social, shape=(batch, binary.shape[1]))
            lists.insert(2, _sparse_top(social, self.n_social, excluded_keys))
        books = _merge(lists, width)
        tt_rank = _ranks_in(books, tt_books, self.n_retrieval)
        co_rank = _ranks_in(books, co_books, self.n_cooc)
        mf_rank = _ranks_in(books, mf_books, self.n_mf)
        ease_rank = _ranks_in(books, ease_books, self.n_ease)
        mask = books >= 0
        safe = np.maximum(books, 0)
        tt_score = row_dots(self.retriever.book_embeddings, safe, vectors)
        tt_score /= self.retriever.temperature
        zeros = np.zeros((batch, width), dtype=np.float32)
        ease_score = zeros if ease_scores is None else sparse_values(ease_scores, safe)
        mf_score = (
            self.mf.scores_of(mf_vectors, safe)
            if self.mf is not None and mf_vectors is not None
            else zeros
        )
        return Candidates(
            books=books,
            retrieval_score=np.where(mask, tt_score, 0).astype(np.float32),
            retrieval_rank=tt_rank,
            from_retrieval=mask & (tt_rank < self.n_retrieval),
            cooc_score=np.where(mask, sparse_values(co, safe), 0).astype(np.float32),
            cooc_rank=co_rank,
            from_cooc=mask & (co_rank < self.n_cooc),
            mf_score=np.where(mask, mf_score, 0).astype(np.float32),
            mf_rank=mf_rank,
            from_mf=mask & (mf_rank < self.n_mf),
            ease_score=np.where(mask, ease_score, 0).astype(np.float32),
            ease_rank=ease_rank,
            from_ease=mask & (ease_rank < self.n_ease),
        )


@dataclass
class Retrieved:
    """Output of stage 1 for a batch of users: what stage 2 (the ranker) takes as input.

    Plain numpy/torch data, so it crosses process boundaries (Ray Serve handles) as is.
    """

    candidates: Candidates
    history: torch.Tensor  # [B, max_history] encoded histories (0 = pad)
    # [B, D] the users' two-tower vectors (exploration scores new books with them); None
    # from code that does not keep them
    vectors: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.candidates.books)

    @staticmethod
    def concat(parts: list[Retrieved]) -> Retrieved:
        """One batch from several (same candidate width and history length)."""
        fields = {
            f: np.concatenate([getattr(p.candidates, f) for p in parts])
            for f in Candidates.__dataclass_fields__
        }
        vectors = [p.vectors for p in parts if p.vectors is not None]
        joined = np.concatenate(vectors) if len(vectors) == len(parts) else None
        return Retrieved(Candidates(**fields), torch.cat([p.history for p in parts]), joined)

    def split(self, sizes: list[int]) -> list[Retrieved]:
        """Inverse of :meth:`concat`."""
        out, start = [], 0
        for size in sizes:
            rows = slice(start, start + size)
            fields = {f: getattr(self.candidates, f)[rows] for f in Candidates.__dataclass_fields__}
            vectors = None if self.vectors is None else self.vectors[rows]
            out.append(Retrieved(Candidates(**fields), self.history[rows], vectors))
            start += size
        return out


class TwoStageRecommender:
    """retrieve (two-tower + EASE + MF + co-occurrence) -> rank -> top-K.

    Args:
        generator: the candidate generator.
        ranker: a trained ``Ranker``.
        books: encoded book table (row = book index).
        log_popularity: ``log1p`` training count per book index.
    """

    def __init__(
        self,
        generator: CandidateGenerator,
        ranker: nn.Module,
        books: BookFeatures,
        log_popularity: torch.Tensor,
    ) -> None:
        self.generator, self.ranker = generator, ranker.eval()
        self.books, self.log_popularity = books, log_popularity
        self.retriever = generator.retriever
        self.n_books = self.retriever.n_books
        self.base_books = self.n_books
        self.num_tags = int(self.retriever.state.tags.size)

    def add_books(self, features: BookFeatures, vectors: np.ndarray) -> np.ndarray:
        """Add catalogue books the model never saw: retrieval finds them by their book-tower
        ``vectors``; the ranker scores them from their side ``features`` (OOV id, no
        popularity, no co-reads yet). Returns their new indices."""
        new = self.retriever.add_books(vectors)
        self.books = cast(
            BookFeatures,
            {k: torch.cat([self.books[k], features[k]]) for k in self.books},  # type: ignore[literal-required]
        )
        self.log_popularity = torch.cat([self.log_popularity, torch.zeros(len(new))])
        neighbours = self.generator.cooccurrence.neighbours.tocsr(copy=True)
        neighbours.resize((self.retriever.n_books, self.retriever.n_books))
        self.generator.cooccurrence = CooccurrenceRecommender(neighbours)  # never shared
        if self.generator.ease is not None:
            self.generator.ease = self.generator.ease.with_books(self.retriever.n_books)
        if self.generator.mf is not None:
            self.generator.mf = self.generator.mf.with_books(self.retriever.n_books)
        self.n_books = self.retriever.n_books
        return new

    def retrieve(
        self,
        users: np.ndarray,
        history: sp.csr_matrix,
        exclude_seen: bool = True,
        social: sp.csr_matrix | None = None,
    ) -> Retrieved:
        """Stage 1: candidates from every source, with the encoded histories the ranker needs
        (``social``: the friends' reads, see :class:`CandidateGenerator`)."""
        feats = self.retriever.features_from_matrix(users, history)
        vectors = self.retriever.encode(feats)
        excluded = [
            set(history.indices[history.indptr[i] : history.indptr[i + 1]].tolist())
            if exclude_seen
            else set()
            for i in range(len(users))
        ]
        candidates = self.generator.generate(vectors, history, excluded, social)
        return Retrieved(candidates, feats["history"], np.asarray(vectors))

    def rank_features(self, retrieved: Retrieved) -> tuple[torch.Tensor, np.ndarray]:
        """Stage 2: pair features and ranker scores (``-inf`` on padding)."""
        cands = retrieved.candidates
        dense = pair_features(
            cands, retrieved.history, self.books, self.log_popularity, self.num_tags
        )
        ids = np.maximum(cands.books, 0)
        ids[ids >= self.base_books] = 1  # added books: the ranker's OOV id, real side features
        with torch.no_grad():
            scores = self.ranker(dense, retrieved.history, torch.from_numpy(ids))
        scores = scores.numpy().astype(np.float32)
        scores[~cands.mask] = -np.inf
        return dense, scores

    def rank(self, retrieved: Retrieved) -> np.ndarray:
        """Stage 2: ranker scores ``[B, K]`` of the candidates (``-inf`` on padding)."""
        return self.rank_features(retrieved)[1]

    def stages(
        self,
        users: np.ndarray,
        history: sp.csr_matrix,
        exclude_seen: bool = True,
        social: sp.csr_matrix | None = None,
    ) -> tuple[Candidates, torch.Tensor, np.ndarray, torch.Tensor]:
        """Candidates, pair features, ranker scores (``-inf`` on padding) and encoded history."""
        retrieved = self.retrieve(users, history, exclude_seen, social)
        dense, scores = self.rank_features(retrieved)
        return retrieved.candidates, dense, scores, retrieved.history

    def recommend(
        self, users: np.ndarray, history: sp.csr_matrix, k: int, exclude_seen: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        cands, _, scores, _ = self.stages(users, history, exclude_seen)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        top = np.take_along_axis(cands.books, order, axis=1)
        top_scores = np.take_along_axis(scores, order, axis=1)
        top[np.isneginf(top_scores)] = PADDING
        if top.shape[1] < k:
            pad = k - top.shape[1]
            top = np.pad(top, ((0, 0), (0, pad)), constant_values=PADDING)
            top_scores = np.pad(top_scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        return top, top_scores

    def score(self, users: np.ndarray, history: sp.csr_matrix) -> np.ndarray:
        """Ranker scores on each user's candidates; ``-inf`` for books not retrieved."""
        cands, _, scores, _ = self.stages(users, history)
        out = np.full((len(users), self.n_books), -np.inf, dtype=np.float32)
        rows = np.repeat(np.arange(len(users)), cands.books.shape[1])
        keep = cands.books.ravel() >= 0
        out[rows[keep], cands.books.ravel()[keep]] = scores.ravel()[keep]
        return out

    def inspect(self, user: int, history: sp.csr_matrix) -> pl.DataFrame:
        """One row per candidate of one user: sources, features, ranker score and reason,
        best first."""
        cands, dense, scores, hist = self.stages(np.array([user]), history)
        keep = cands.mask[0]
        books = cands.books[0][keep]
        frame = pl.DataFrame({"book_idx": books, "score": scores[0][keep]})
        frame = frame.with_columns(
            pl.Series(name, dense[0][keep][:, i].numpy()) for i, name in enumerate(FEATURES)
        )
        reasons = self.reasons(hist[0], books, cands.from_cooc[0][keep])
        return frame.with_columns(
            reason_book=pl.Series(reasons[0]), reason=pl.Series(reasons[1])
        ).sort("score", descending=True)

    def reasons(
        self, history: torch.Tensor, books: np.ndarray, from_cooc: np.ndarray
    ) -> tuple[list[int], list[str]]:
        """For each book, the history book that explains it best and the kind of reason:
        ``co-read`` (readers of that book also read this one) or ``similar``."""
        hist = history.numpy().astype(np.int64)
        hist = hist[hist > 0]
        if hist.size == 0:
            return [-1] * len(books), ["popular"] * len(books)
        books = np.asarray(books, dtype=np.int64)
        emb = self.retriever.book_embeddings
        sims = emb[books] @ emb[hist].T  # (K, H)
        co = self.generator.cooccurrence.pair_values(hist[None, :], books[:, None])  # (K, H)
        co_read = np.asarray(from_cooc, dtype=bool) & (co.max(axis=1, initial=0) > 0)
        best = np.where(co_read, co.argmax(axis=1), sims.argmax(axis=1))
        return hist[best].tolist(), ["co-read" if c else "similar" for c in co_read.tolist()]
