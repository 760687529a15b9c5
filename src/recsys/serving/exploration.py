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

    def explore(self, requests: list[Any], answers: list[Any]) -> None:
        """Give ``exploration.share`` of each list's slots (the last ones a pin does not
        hold) to books read by at most ``max_reads`` readers.

        The books are drawn one at a time from a softmax over the reader's two-tower scores
        (the model's temperature, then ``exploration.temperature``; "less of this author"
        applies), among the books the reader could be offered that keep works and series in
        order and the business rules' diversity caps. Each drawn book records its propensity:
        the probability it had at its draw, given the books drawn before it (their product is
        the probability of the explored slots). A pool smaller than the slots leaves the
        model's books in the rest."""
        settings = self.path.exploration
        reads = self.path.reads
        new = np.flatnonzero(self.path.catalogue.listed)
        known = new[new < reads.size]
        new = np.concatenate([known[reads[known] <= settings.max_reads], new[new >= reads.size]])
        new = new[new >= NUM_RESERVED]
        if new.size == 0:
            return
        users = np.array(
            [self.path.users.encode_one(r.user_id) if r.user_id else 1 for r in requests]
        )
        matrix = self.path.stacked(requests)
        vectors = self.path.retriever.encode(
            self.path.retriever.features_from_matrix(users, matrix)
        )
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
            logits = self.path.retriever.book_embeddings[pool] @ vectors[row]
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

    def _pool(self, new: np.ndarray, req: Any, history: list[int], kept: list[int]) -> np.ndarray:
        """The new books this reader could be offered in an exploration slot."""
        works = self.path.catalogue.works
        check = self.path.offerable(req.exclude, req.allowed, set(history))
        read_history = works.works_read(history)  # once, not per book
        read = read_history | works.works_read(kept)
        taken = set(kept)
        return np.array(
            [
                int(b)
                for b in new.tolist()
                if b not in taken
                and check(b)
                and (b >= len(works) or works.work_of(b) not in read)
                and self.path.order.waits(b, read_history, check) is None
            ],
            dtype=np.int64,
        )

    def _draw_slots(
        self, pool: np.ndarray, logits: np.ndarray, n: int, kept: list[int], caps: Any
    ) -> list[tuple[int, float]]:
        """Draw ``n`` books one by one; after each, its work (and any author or series at
        its diversity cap) leaves the pool."""
        works, authors = self.path.catalogue.works, self.path.catalogue.authors

        def author(b: int) -> str | None:
            return authors[b] if b < len(authors) else None

        def series(b: int) -> int:
            return works.series_of(b) if b < len(works) else -1

        def work(b: int) -> int:
            return works.work_of(b) if b < len(works) else -b - 1

        count_a: dict[str | None, int] = {}
        count_s: dict[int, int] = {}
        for b in kept:
            count_a[author(b)] = count_a.get(author(b), 0) + 1
            count_s[series(b)] = count_s.get(series(b), 0) + 1
        max_a = getattr(caps, "max_per_author", None)
        max_s = getattr(caps, "max_per_series", None)

        def allowed_now(b: int) -> bool:
            if max_a and author(b) is not None and count_a.get(author(b), 0) >= max_a:
                return False
            return not (max_s and series(b) >= 0 and count_s.get(series(b), 0) >= max_s)

        alive = np.array([allowed_now(int(b)) for b in pool], dtype=bool)
        out: list[tuple[int, float]] = []
        while len(out) < n and alive.any():
            pick, probability = draw_one(self._rng, logits, alive)
            book = int(pool[pick])
            out.append((book, probability))
            count_a[author(book)] = count_a.get(author(book), 0) + 1
            count_s[series(book)] = count_s.get(series(book), 0) + 1
            for i, other in enumerate(pool.tolist()):
                if alive[i] and (work(other) == work(book) or not allowed_now(other)):
                    alive[i] = False
        return out


def draw_one(rng: np.random.Generator, logits: np.ndarray, alive: np.ndarray) -> tuple[int, float]:
    """One index drawn from a softmax over ``logits`` where ``alive``; its probability."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = np.where(alive, logits - logits[alive].max(), -np.inf)
    probs = np.exp(shifted)
    probs /= probs.sum()
    pick = int(rng.choice(probs.size, p=probs))
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
