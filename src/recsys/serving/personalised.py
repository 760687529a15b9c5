"""The one personalised path: candidates -> filters and exclusions -> rank -> reasons.

Every personalised answer goes through :class:`PersonalisedPath`: online requests (micro-batched
by the service), offline batch scoring (``explain=False``) and both Ray topologies (the stages
run in process or behind deployment handles, see :mod:`recsys.serving.stages`). Lists that
filters leave short are topped up from popularity.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch

from recsys.features.ranking import Candidates
from recsys.features.vocab import IdVocab
from recsys.inference.popularity import PopularityRecommender
from recsys.inference.two_stage import TwoStageRecommender
from recsys.inference.two_tower import TwoTowerRecommender
from recsys.serving.catalogue import Catalogue
from recsys.serving.exploration import Explorer
from recsys.serving.reading_order import Pick, ReadingOrder
from recsys.serving.rules import BoundRules
from recsys.serving.settings import ExplorationSettings
from recsys.serving.stages import Stages

# "less of this author": that author's books keep this share of their odds (score + ln of it)
LESS_OF_AUTHOR = 0.25
# fallback reasons that say nothing lasting about the reader: never cached
TRANSIENT = ("timeout", "stage_error", "overloaded", "store_unavailable", "caller_left")


@dataclass
class Personal:
    """One personalised request for the model stages: a history row and what to leave out."""

    user_id: str | None
    matrix: sp.csr_matrix  # [1, n_books]
    limit: int
    exclude: set[int]
    allowed: np.ndarray | None
    source: str
    retrieval_only: bool = False  # an experiment setting: two-tower answer, no ranker
    rules: list[str] = field(default_factory=list)  # business rules that left books out
    fewer: frozenset[str] = frozenset()  # authors the reader asked for less of
    explore: bool = False  # an online list: exploration slots when configured
    # "friends are reading": unread books of the readers they follow, with who read each
    friends: dict[int, list[str]] = field(default_factory=dict)


@dataclass
class Answer:
    """Books (vocabulary indices) with scores and reasons, and which path produced them."""

    books: list[int]
    scores: list[float]
    reasons: list[str]
    source: str
    fallback_reason: str | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    from_model: int | None = None  # leading books from the model; the rest topped up
    history_length: int | None = None  # books in the history behind a user's list (drift)
    rules: list[str] = field(default_factory=list)  # business rules that changed the list
    # exploration slots: (book, position from 1, the probability the policy gave it, pool)
    explored: list[tuple[int, int, float, int]] = field(default_factory=list)
    pinned: set[int] = field(default_factory=set)  # books a business rule's pin placed
    batch: int | None = None  # requests answered by the same model call (the micro-batch)


class PersonalisedPath:
    """Answers batches of personalised requests from one bundle's models.

    Args:
        users: the bundle's user vocabulary (a known user id adds its id features).
        retriever: the two-tower retriever (the retrieval-only path and vectors).
        pipeline: the two-stage recommender, None for a bundle without a ranker.
        stages: where retrieval and ranking run for the two-stage path.
        catalogue: the live catalogue (titles for reasons, listed books).
        popularity: the fallback and top-up order.
    """

    def __init__(
        self,
        users: IdVocab,
        retriever: TwoTowerRecommender,
        pipeline: TwoStageRecommender | None,
        stages: Stages | None,
        catalogue: Catalogue,
        popularity: PopularityRecommender,
    ) -> None:
        self.users, self.retriever, self.pipeline = users, retriever, pipeline
        self.stages, self.catalogue, self.popularity = stages, catalogue, popularity
        self.order = ReadingOrder(catalogue.works)
        self.exploration = ExplorationSettings()  # share 0: off (the service sets it)
        # training readers per book (books added since: none); the service sets the bundle's
        self.reads: np.ndarray = np.zeros(0)
        self.explorer = Explorer(self)
        # the business rules in force, bound to this catalogue (None: no rules)
        self.rules: Callable[[], BoundRules | None] = lambda: None

    def arrange(
        self,
        bound: BoundRules | None,
        ranked: Iterable[tuple[int, float]],
        history: list[int],
        check: Callable[[int], bool],
        limit: int,
        taken: Iterable[int] = (),
    ) -> tuple[list[Pick], list[str]]:
        """Reading order, then the business rules' caps, shares and pins, over ranked books
        (already boosted and filtered); the names of the rules that changed the list.

        With rules, ``ranked`` should not run short (the callers chain popularity after the
        model's books): caps and shares then hold on the whole list, and pins keep their
        slots."""
        if bound is None:
            walk = self.order.walk(ranked, history, check, taken)
            return list(itertools.islice(walk, limit)), []
        works = self.catalogue.works
        read = works.works_read(history)

        def shown(book: int) -> bool:  # a pinned book: offerable, its work unread, in order
            if not check(book) or (book < len(works) and works.work_of(book) in read):
                return False
            return self.order.waits(book, read, check) is None

        pins = bound.pins(limit, shown, time.time())
        walk = self.order.walk(ranked, history, check, [*taken, *(b for _, b in pins)])
        return bound.arrange(walk, limit, pins)

    def popular_stream(self, check: Callable[[int], bool]) -> Iterator[tuple[int, float]]:
        """Popular books the reader could be offered, most popular first, scored below any
        model score (the tail of a list the rules arrange)."""
        for book in self.popularity.order:
            if check(int(book)):
                yield int(book), -1e9 + float(self.popularity.scores[book])

    def boosted(
        self,
        bound: BoundRules | None,
        books: np.ndarray,
        scores: np.ndarray,
        log_scale: bool = True,
    ) -> tuple[np.ndarray, list[str]]:
        """Scores after the business rules' boosts (unchanged without rules)."""
        if bound is None or not bound.rules.spec.boosts:
            return scores, []
        return bound.boost(books, scores, log_scale)

    def fewer_of(
        self, fewer: frozenset[str], books: np.ndarray, scores: np.ndarray, log_scale: bool = True
    ) -> np.ndarray:
        """Scores with the books of authors the reader wants less of down-weighted
        (``LESS_OF_AUTHOR``: model scores + its log, counts x it)."""
        if not fewer:
            return scores
        authors = self.catalogue.authors
        hit = np.array(
            [0 <= b < len(authors) and authors[b] in fewer for b in np.asarray(books).tolist()],
            dtype=bool,
        )
        out = np.asarray(scores, dtype=np.float64).copy()
        if log_scale:
            out[hit] += np.log(LESS_OF_AUTHOR)
        else:
            out[hit] *= LESS_OF_AUTHOR
        return out

    def words(self, pick: Pick, history: list[int], otherwise: str) -> str:
        """A pick's reason: a rule's (a pin), its series note's, else ``otherwise``."""
        return pick.reason or self.order.reason(pick, history) or otherwise

    def offerable(
        self, exclude: set[int], allowed: np.ndarray | None, history: set[int]
    ) -> Callable[[int], bool]:
        """Whether a book could be proposed to this reader now (a volume standing in for a
        later one must be)."""
        listed = self.catalogue.listed

        def check(book: int) -> bool:
            return bool(
                listed[book]
                and book not in exclude
                and book not in history
                and (allowed is None or allowed[book])
            )

        return check

    def popular(
        self,
        limit: int,
        exclude: set[int],
        allowed: np.ndarray | None,
        reason: str | None,
        source: str = "popularity",
        history: Iterable[int] = (),
        taken: Iterable[int] = (),
        arranged: bool = True,
        fewer: frozenset[str] = frozenset(),
    ) -> Answer:
        """The most popular listed books not excluded (the fallback and the top-up), in
        reading order for a reader with ``history`` (after the books ``taken``), arranged
        by the business rules (not ``arranged``: a top-up, after a list they arranged)."""
        history = list(history)
        check = self.offerable(exclude, allowed, set(history))
        bound = self.rules() if arranged else None
        order, scores = self.popularity.order, self.popularity.scores
        boosted, names = self.boosted(bound, np.asarray(order), scores[order], log_scale=False)
        boosted = self.fewer_of(fewer, np.asarray(order), boosted, log_scale=False)
        if names or fewer:
            order = order[np.argsort(-boosted, kind="stable")]
            scores = np.zeros(len(scores))
            scores[self.popularity.order] = boosted
        stream = ((int(b), float(scores[b])) for b in order if check(int(b)))
        picks, applied = self.arrange(bound, stream, history, check, limit, taken)
        reasons = [self.words(p, history, "popular with readers") for p in picks]
        answer = Answer([p.book for p in picks], [p.score for p in picks], reasons, source, reason)
        answer.rules = [n for n in names if _listed(bound, n, picks)] + applied
        answer.pinned = {p.book for p in picks if p.reason is not None}
        return answer

    def answer(self, requests: list[Personal], explain: bool = True) -> list[Answer]:
        """Two-stage (or retrieval-only) answers for a batch of requests, one model call per
        path; ``explain=False`` skips the reasons (batch scoring)."""
        ranked = [r.retrieval_only is False for r in requests]
        two_stage = self.pipeline is not None and self.stages is not None
        if two_stage and any(ranked) and not all(ranked):
            # a batch mixing ranked and retrieval-only requests: answer each group apart
            merged: dict[int, Answer] = {}
            for flag in (True, False):
                rows = [i for i, r in enumerate(ranked) if r is flag]
                part = self.answer([requests[i] for i in rows], explain)
                merged.update(zip(rows, part, strict=True))
            return [merged[i] for i in range(len(requests))]
        users = np.array([self.users.encode_one(r.user_id) if r.user_id else 1 for r in requests])
        matrix = self.stacked(requests)
        if two_stage and all(ranked):
            answers, vectors = self._two_stage(requests, users, matrix, explain)
        else:
            answers, vectors = self._retrieval_only(requests, users, matrix, explain)
        for req, answer in zip(requests, answers, strict=True):
            self._top_up(req, answer, explain)
            answer.rules = [*req.rules, *answer.rules]
            answer.batch = len(requests)
        exploring = [i for i, r in enumerate(requests) if r.explore]
        if exploring and self.exploration.share > 0:
            self.explorer.explore(
                [requests[i] for i in exploring],
                [answers[i] for i in exploring],
                None if vectors is None else vectors[exploring],
            )
        return answers

    def stacked(self, requests: list[Personal]) -> sp.csr_matrix:
        n_books = self.retriever.n_books
        if len(requests) == 1 and requests[0].matrix.shape[1] == n_books:
            return requests[0].matrix  # the common case under light load
        stacked = sp.vstack([r.matrix for r in requests], format="csr")
        # rows built before a book was added are narrower: widen them to the catalogue
        return sp.csr_matrix(
            (stacked.data, stacked.indices, stacked.indptr), shape=(stacked.shape[0], n_books)
        )

    def _two_stage(
        self, requests: list[Personal], users: np.ndarray, matrix: sp.csr_matrix, explain: bool
    ) -> tuple[list[Answer], np.ndarray | None]:
        """The ranked answers, and the users' vectors retrieval computed (None where the
        stage does not return them)."""
        assert self.stages is not None
        started = time.perf_counter()
        social = social_matrix([r.friends for r in requests], matrix.shape[1])
        retrieved = self.stages.retrieve(users, matrix, social)
        retrieved_at = time.perf_counter()
        scores = self.stages.rank(retrieved)
        timings = {
            "retrieval": (retrieved_at - started) * 1000,
            "ranking": (time.perf_counter() - retrieved_at) * 1000,
        }
        answers = [
            self._ranked(req, retrieved.candidates, retrieved.history, scores, row, explain)
            for row, req in enumerate(requests)
        ]
        for answer in answers:
            answer.timings_ms = timings
        return answers, getattr(retrieved, "vectors", None)

    def _retrieval_only(
        self, requests: list[Personal], users: np.ndarray, matrix: sp.csr_matrix, explain: bool
    ) -> tuple[list[Answer], np.ndarray]:
        vectors = self.retriever.encode(self.retriever.features_from_matrix(users, matrix))
        answers = []
        for row, req in enumerate(requests):
            history = req.matrix.indices.tolist()
            seen = set(history)
            # a margin for the editions and later volumes reading order leaves out
            top, top_scores = self.retriever.search(
                vectors[row : row + 1], 2 * req.limit + 10, [seen | req.exclude], req.allowed
            )
            books = np.asarray(top[0], dtype=np.int64)
            bound = self.rules()
            scores = np.asarray(top_scores[0], dtype=np.float64)
            boosted, names = self.boosted(bound, books, scores)
            boosted = self.fewer_of(req.fewer, books, boosted)
            order = np.argsort(-boosted, kind="stable")
            found = [(int(books[i]), float(boosted[i])) for i in order if books[i] >= 0]
            check = self.offerable(req.exclude, req.allowed, seen)
            ranked = self._tailed(bound, found, check)
            picks, applied = self.arrange(bound, ranked, history, check, req.limit)
            reasons = [self.words(p, history, "matches your reading history") for p in picks]
            answer = Answer(
                [p.book for p in picks],
                [p.score for p in picks],
                reasons if explain else [],
                req.source,
            )
            answer.rules = [n for n in names if _listed(bound, n, picks)] + applied
            answer.pinned = {p.book for p in picks if p.reason is not None}
            answer.from_model = _leading(picks, {b for b, _ in found})
            answers.append(answer)
        return answers, vectors

    def _tailed(
        self,
        bound: BoundRules | None,
        ranked: Iterable[tuple[int, float]],
        check: Callable[[int], bool],
    ) -> Iterable[tuple[int, float]]:
        """With rules: the model's books, then popular ones (the list never runs short, so
        caps, shares and pins hold on all of it). Without: the model's books alone (a short
        list is topped up after)."""
        if bound is None:
            return ranked
        return itertools.chain(ranked, self.popular_stream(check))

    def _top_up(self, req: Personal, answer: Answer, explain: bool) -> None:
        """Filters left too few books: fill the list from popularity (with rules in force
        the list was arranged with popularity after the model's books already)."""
        if answer.from_model is None:
            answer.from_model = len(answer.books)
        if len(answer.books) >= req.limit:
            return
        history = req.matrix.indices.tolist()
        extra = self.popular(
            req.limit - len(answer.books),
            req.exclude | set(answer.books),
            req.allowed,
            None,
            history=history,
            taken=answer.books,
            arranged=False,
            fewer=req.fewer,
        )
        answer.books += extra.books
        answer.scores += extra.scores
        answer.reasons += extra.reasons if explain else []

    def _ranked(
        self,
        req: Personal,
        cands: Candidates,
        history: torch.Tensor,
        scores: np.ndarray,
        row: int,
        explain: bool,
    ) -> Answer:
        """One user's answer from the ranker scores of its candidates (row ``row``)."""
        assert self.pipeline is not None
        bound = self.rules()  # one set of rules for the whole list
        row_scores, names = self.boosted(bound, cands.books[row], scores[row])
        row_scores = self.fewer_of(req.fewer, cands.books[row], row_scores)
        order = np.argsort(-row_scores, kind="stable")
        books = cands.books[row][order].tolist()
        wanted = (
            (b, float(row_scores[i]))
            for b, i in zip(books, order.tolist(), strict=True)
            if b >= 0 and b not in req.exclude and (req.allowed is None or req.allowed[b])
        )  # lazily: the first `limit` of ~300 candidates are all a list needs
        read = req.matrix.indices.tolist()
        check = self.offerable(req.exclude, req.allowed, set(read))
        ranked = self._tailed(bound, wanted, check)
        picks, applied = self.arrange(bound, ranked, read, check, req.limit)
        chosen = [p.book for p in picks]
        answer = Answer(chosen, [p.score for p in picks], [], req.source)
        answer.rules = [n for n in names if _listed(bound, n, picks)] + applied
        answer.pinned = {p.book for p in picks if p.reason is not None}
        if bound is not None:
            answer.from_model = _leading(picks, set(cands.books[row].tolist()))
        if explain:
            co_read = set(cands.books[row][cands.from_cooc[row].astype(bool)].tolist())
            why, kinds = self.pipeline.reasons(  # (a set, not np.isin: 10 books, ~0.15 ms less)
                history[row],
                np.array(chosen, dtype=np.int64),
                np.array([b in co_read for b in chosen], dtype=bool),
            )
            answer.reasons = [
                self.words(p, read, friends_read(req.friends.get(p.book)) or self.reason(w, k))
                for p, w, k in zip(picks, why, kinds, strict=True)
            ]
        return answer

    def reason(self, book: int, kind: str) -> str:
        """The words of a reason: ``book`` (a history book, -1 when none is known to the
        model, e.g. only books added after training) and ``kind`` from
        :meth:`TwoStageRecommender.reasons`."""
        if book < 0 or kind == "popular":
            return "popular with readers"
        if kind == "co-read":
            return f"readers of {self.title(book)} also read this"
        return f"because you read {self.title(book)}"

    def title(self, index: int) -> str:
        return str(self.catalogue.titles[index] or self.catalogue.ids[index])


def social_matrix(friend_books: list[dict[int, list[str]]], n_books: int) -> sp.csr_matrix | None:
    """``[B, n_books]``: per row, how many of the readers it follows read each book (the
    rows' ``Personal.friends``; None when no row has friends' books)."""
    if not any(friend_books):
        return None
    rows, cols, counts = [], [], []
    for row, books in enumerate(friend_books):
        for book, friends in books.items():
            if book < n_books:
                rows.append(row)
                cols.append(book)
                counts.append(len(friends))
    return sp.csr_matrix(
        (np.array(counts, dtype=np.float32), (rows, cols)), shape=(len(friend_books), n_books)
    )


def friends_read(friends: list[str] | None) -> str | None:
    """The "friends are reading" reason: who of the people the reader follows read it."""
    if not friends:
        return None
    if len(friends) == 1:
        return f"{friends[0]}, whom you follow, read this"
    if len(friends) == 2:
        return f"{friends[0]} and {friends[1]}, whom you follow, read this"
    return f"{friends[0]} and {len(friends) - 1} others you follow read this"


def _listed(bound: BoundRules | None, boost: str, picks: list[Pick]) -> bool:
    """Whether a boost (``boost:<name>``) matched a book that made the list."""
    if bound is None:
        return False
    name = boost.split(":", 1)[1]
    spec = next(b for b in bound.rules.spec.boosts if b.name == name)
    mask = bound.mask(spec.filter)
    return any(p.book < mask.size and mask[p.book] for p in picks)


def _leading(picks: list[Pick], model: set[int]) -> int:
    """How many of the list's first books the model proposed (the rest: popularity)."""
    count = 0
    for pick in picks:
        if pick.book not in model:
            break
        count += 1
    return count
