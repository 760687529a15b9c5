"""Exploration for new books: a share of each online user list for books with few reads,
drawn to match the reader, each with its propensity (docs/serving.md, "Exploration")."""

from __future__ import annotations

from typing import Any

import numpy as np

from recsys.features.vocab import NUM_RESERVED


class Explorer:
    """The exploration step of one ``PersonalisedPath`` (its settings, models and catalogue;
    typed loosely here: that module imports this one).
    """

    def __init__(self, path: Any) -> None:
        self.path = path
        self._rng = np.random.default_rng()
        self._cached: tuple[Any, ...] | None = None  # see _new_books

    def explore(
        self, requests: list[Any], answers: list[Any], vectors: np.ndarray | None = None
    ) -> None:
        """Give ``exploration.share`` of each list's slots (the last ones a pin does not
        hold) to books read by at most ``max_reads`` readers.

        The books are drawn one at a time from a softmax over the reader's two-tower scores
        (the model's temperature, then ``exploration.temperature``; "less of this author"
        applies), among the books the reader could be offered that keep works and series in
        order and the business rules' diversity caps. Each drawn book records its propensity:
        the probability it had at its draw, given the books drawn before it (their product is
        the probability of the explored slots). A pool smaller than the slots leaves the
        model's books in the rest. ``vectors``: the readers' two-tower vectors, when the
        answers' retrieval kept them (else encoded here)."""
        settings = self.path.exploration
        new, where, new_vectors = self._new_books()
        if new.size == 0:
            return
        if vectors is None:
            users = np.array(
                [self.path.users.encode_one(r.user_id) if r.user_id else 1 for r in requests]
            )
            matrix = self.path.stacked(requests)
            vectors = self.path.retriever.encode(
                self.path.retriever.features_from_matrix(users, matrix)
            )
        # every new book's score for every reader of the batch in one product ([B, new]),
        # rather than gathering each pool's vectors row by row
        scores = vectors @ new_vectors.T
        bound = self.path.rules()
        caps = bound.rules.spec.diversity if bound is not None else None
        for row, (req, answer) in enumerate(zip(requests, answers, strict=True)):
            slots = int(np.floor(settings.share * len(answer.books) + 1e-9))
            free = [i for i, b in enumerate(answer.books) if b not in answer.pinned]
            places = free[len(free) - slots :] if slots else []
            if not places:
                continue
            kept = [b for i, b in enumerate(answer.books) if i not in set(places)]
            history = req.matrix.indices.tolist()
            pool = self._pool(new, req, history, kept)
            if pool.size == 0:
                continue
            logits = scores[row, where[pool]]
            logits = logits / self.path.retriever.temperature / settings.temperature
            logits = self.path.fewer_of(req.fewer, pool, logits)
            drawn = self._draw_slots(pool, logits, len(places), kept, caps)
            reason = "new in the catalogue, picked to match your reading"
            for place, (book, propensity) in zip(places, drawn, strict=False):
                answer.books[place] = book
                answer.scores[place] = propensity
                if answer.reasons:
                    answer.reasons[place] = reason
                answer.explored.append((book, place + 1, propensity, int(pool.size)))

    def _new_books(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The listed books read by at most ``max_reads`` readers, each book index's column
        among those with a two-tower vector (-1: none) and those vectors ``[n, D]``. Made
        again only when the catalogue (its ``generation`` counts edits), the read counts, the
        book vectors or ``max_reads`` change: per batch this was a gather of some 5,000
        vectors on Amazon-Book, about a millisecond."""
        path, settings = self.path, self.path.exploration
        embeddings, reads, catalogue = path.retriever.book_embeddings, path.reads, path.catalogue
        key = (catalogue.generation, settings.max_reads)
        cached = self._cached
        if (
            cached is not None
            and cached[0] == key
            and cached[1] is embeddings
            and cached[2] is reads
            and cached[3] is catalogue
        ):
            return cached[4]
        new = np.flatnonzero(catalogue.listed)
        known = new[new < reads.size]
        new = np.concatenate([known[reads[known] <= settings.max_reads], new[new >= reads.size]])
        new = new[new >= NUM_RESERVED]
        where = np.full(embeddings.shape[0], -1, dtype=np.int64)
        scored = new[new < where.size]
        where[scored] = np.arange(scored.size)
        found = (new, where, np.ascontiguousarray(embeddings[scored]))
        self._cached = (key, embeddings, reads, catalogue, found)
        return found

    def _pool(self, new: np.ndarray, req: Any, history: list[int], kept: list[int]) -> np.ndarray:
        """The new books this reader could be offered in an exploration slot: listed, allowed,
        not excluded, read or in the list, of no work read or listed, and keeping their
        series in order. Array operations over ``new`` (thousands of books on Amazon-Book);
        only books in a series take the reading-order check one by one."""
        works, listed = self.path.catalogue.works, self.path.catalogue.listed
        check = self.path.offerable(req.exclude, req.allowed, set(history))
        read_history = works.works_read(history)  # once, not per book
        read = read_history | works.works_read(kept)
        pool = new[new < listed.size]
        pool = pool[listed[pool]]
        if req.allowed is not None:
            pool = pool[pool < req.allowed.size]
            pool = pool[req.allowed[pool]]
        drop = req.exclude | set(history) | set(kept)
        if drop:
            pool = pool[~_member(pool, _ints(drop))]
        work, series = works.arrays()
        if read:
            pool = pool[~_member(_at(work, pool, -1), _ints(read))]
        in_series = np.flatnonzero(_at(series, pool, -1) >= 0)
        if in_series.size:
            keep = np.ones(pool.size, dtype=bool)
            for i in in_series.tolist():
                keep[i] = self.path.order.waits(int(pool[i]), read_history, check) is None
            pool = pool[keep]
        return pool.astype(np.int64)

    def _draw_slots(
        self, pool: np.ndarray, logits: np.ndarray, n: int, kept: list[int], caps: Any
    ) -> list[tuple[int, float]]:
        """Draw ``n`` books one by one; after each, its work (and any author or series at
        its diversity cap) leaves the pool."""
        works, authors = self.path.catalogue.works, self.path.catalogue.authors
        work, series = works.arrays()
        pool_work = np.where(pool < work.size, _at(work, pool, 0), -pool - 1)
        pool_series = _at(series, pool, -1)
        max_a = getattr(caps, "max_per_author", None)
        max_s = getattr(caps, "max_per_series", None)

        def author(b: int) -> str | None:
            return authors[b] if b < len(authors) else None

        codes: dict[str | None, int] = {}
        pool_author = np.zeros(0, dtype=np.int64)
        if max_a:  # authors as codes (a book with none: -1, never capped)
            pool_author = np.array(
                [-1 if (a := author(b)) is None else codes.setdefault(a, len(codes)) for b in pool],
                dtype=np.int64,
            )
        count_a: dict[str | None, int] = {}
        count_s: dict[int, int] = {}

        def count(b: int) -> None:
            count_a[author(b)] = count_a.get(author(b), 0) + 1
            s = works.series_of(b) if b < work.size else -1
            count_s[s] = count_s.get(s, 0) + 1

        def capped() -> np.ndarray:
            """Books whose author or series is at its cap."""
            out = np.zeros(pool.size, dtype=bool)
            if max_a:
                full = [codes[a] for a, c in count_a.items() if c >= max_a and a in codes]
                out |= np.isin(pool_author, full)
            if max_s:
                full = [s for s, c in count_s.items() if s >= 0 and c >= max_s]
                out |= np.isin(pool_series, full)
            return out

        for b in kept:
            count(b)
        alive = ~capped()
        out: list[tuple[int, float]] = []
        while len(out) < n and alive.any():
            pick, probability = draw_one(self._rng, logits, alive)
            book = int(pool[pick])
            out.append((book, probability))
            count(book)
            alive &= (pool_work != pool_work[pick]) & ~capped()
        return out


def _member(values: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """``np.isin(values, wanted)`` through a flag table over ``wanted``'s range: a few
    microseconds where ``np.isin`` compared thousands of pool books with each wanted id in
    turn (ids are indices; a negative one takes ``np.isin``)."""
    if wanted.size == 0 or values.size == 0:
        return np.zeros(values.shape, dtype=bool)
    if wanted.min() < 0:
        return np.isin(values, wanted)
    flags = np.zeros(int(wanted.max()) + 1, dtype=bool)
    flags[wanted] = True
    inside = (values >= 0) & (values < flags.size)
    out = np.zeros(values.shape, dtype=bool)
    out[inside] = flags[values[inside]]
    return out


def _ints(values: set[int]) -> np.ndarray:
    return np.fromiter(values, dtype=np.int64, count=len(values))


def _at(table: np.ndarray, books: np.ndarray, default: int) -> np.ndarray:
    """``table[books]``, ``default`` for books past its end (added since it was built)."""
    inside = books < table.size
    if inside.all():
        return table[books]
    out = np.full(books.size, default, dtype=table.dtype)
    out[inside] = table[books[inside]]
    return out


def draw_one(rng: np.random.Generator, logits: np.ndarray, alive: np.ndarray) -> tuple[int, float]:
    """One index drawn from a softmax over ``logits`` where ``alive``; its probability."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = np.where(alive, logits - logits[alive].max(), -np.inf)
    probs = np.exp(shifted)
    probs /= probs.sum()
    # what ``rng.choice(probs.size, p=probs)`` does (the same draw from the same stream),
    # without its checks of ``p``, which cost more than the draw on thousands of books
    cdf = np.cumsum(probs)
    cdf /= cdf[-1]
    pick = min(int(np.searchsorted(cdf, rng.random(), side="right")), probs.size - 1)
    return pick, float(probs[pick])


def draw(
    rng: np.random.Generator, pool: np.ndarray, logits: np.ndarray, n: int
) -> list[tuple[int, float]]:
    """``n`` books of ``pool`` drawn without replacement from a softmax over ``logits``, each
    with the probability it had at its draw (given the earlier draws)."""
    alive = np.ones(pool.size, dtype=bool)
    out: list[tuple[int, float]] = []
    for _ in range(min(n, pool.size)):
        pick, probability = draw_one(rng, logits, alive)
        out.append((int(pool[pick]), probability))
        alive[pick] = False
    return out
