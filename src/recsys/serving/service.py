"""RecommendationService: the recommendation endpoints of one bundle, in plain Python.

Both runners (uvicorn locally, Ray Serve when scaled out) and batch scoring call this class.
Unknown users without history, stage errors and stages over their time budget are answered
from popularity, and the answer says so. Process-level policies (cache, experiments,
impressions, hot swap) live one level up, in :class:`recsys.serving.core.ServingCore`.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from concurrent.futures import CancelledError
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp
import torch

from recsys.bundle.reader import Bundle, history_matrix
from recsys.errors import RecsysError
from recsys.features.pipeline import transform_books
from recsys.features.ranking import Candidates
from recsys.features.vocab import NUM_RESERVED
from recsys.serving.batching import CURRENT_CALLER, MicroBatcher, Overloaded
from recsys.serving.catalogue import Catalogue
from recsys.serving.histories import KnownHistories
from recsys.serving.live import Live
from recsys.serving.personalised import Answer, Personal, PersonalisedPath, social_matrix
from recsys.serving.schemas import Filters
from recsys.serving.stages import LocalStages, Stages
from recsys.stores import StoreUnavailable
from recsys.stores.events import FRIEND_EVENTS
from recsys.stores.schema import AUTHOR_EVENT_TYPES, EXCLUDING_EVENT_TYPES

log = logging.getLogger(__name__)


class UnknownBook(RecsysError):
    """A book id that is not in the model's catalogue (HTTP 404)."""


class RecommendationService:
    """Answers the recommendation endpoints from one bundle.

    Args:
        bundle: a verified bundle.
        stage_timeout_s: time budget of the personalised path before popularity answers.
        stages: where retrieval and ranking run (default: in this process, from ``bundle``).
        max_batch: most concurrent personalised requests answered by one model call.
        linger_s: under concurrency, how long a batch may wait to gather the requests
            outstanding when the last one ended (:class:`recsys.serving.batching.MicroBatcher`;
            5 ms measured 1.06-1.10x the throughput of 2 ms under 8 clients).
        live: stores, trending and cache (events, catalogue edits, erasure); the default
            serves the bundle alone.
    """

    def __init__(
        self,
        bundle: Bundle,
        stage_timeout_s: float = 0.1,
        stages: Stages | None = None,
        max_batch: int = 16,
        live: Live | None = None,
        linger_s: float = 0.005,
    ) -> None:
        self.bundle = bundle
        self.version = bundle.version
        self.stage_timeout_s = stage_timeout_s
        self.pipeline = bundle.two_stage() if bundle.has_ranker else None
        # one retriever: books added to the catalogue are added to it once
        self.retriever = self.pipeline.retriever if self.pipeline else bundle.recommender()
        self._model_lock = threading.Lock()  # model calls vs. adding books
        if stages is None and self.pipeline is not None:
            stages = LocalStages(self.pipeline)
        self.live = live if live is not None else Live()
        self.stores = self.live.stores
        self.catalogue = Catalogue(bundle, self.stores.catalogue.listed(bundle.books))
        if self.pipeline is not None and self.catalogue.works.has_series:
            # "next in series" from the live catalogue (volumes added or edited through the API)
            self.pipeline.generator.works = self.catalogue.works
        self.path = PersonalisedPath(
            bundle.state.users,
            self.retriever,
            self.pipeline,
            stages,
            self.catalogue,
            bundle.popularity,
        )
        self.path.rules = lambda: self.live.rules.bound(self.catalogue)
        self.path.exploration = self.live.exploration
        if self.live.exploration.share > 0:
            self.path.reads = bundle.popularity_counts
        # books added through the API that this bundle was not trained on
        self.add_books(self.stores.catalogue.added_books())
        self.histories = KnownHistories(bundle.known_histories)
        # One model thread, micro-batching concurrent requests (see recsys.serving.batching).
        self._batcher: MicroBatcher[Personal, Answer] = MicroBatcher(
            self.personalised, max_batch=max_batch, name="recsys-stages", linger_s=linger_s
        )
        # Deeper than this, a queued request would wait out its budget: answer it at once.
        self.max_pending = 4 * max_batch
        self.primed = False  # whether the model path ran once (prime)

    @property
    def stages(self) -> Stages | None:
        """Where the two-stage path runs (replaceable: a fault-injecting wrapper in drills)."""
        return self.path.stages

    @stages.setter
    def stages(self, stages: Stages | None) -> None:
        self.path.stages = stages

    def close(self) -> None:
        # Queued requests still run (a request in flight during a hot swap still answers).
        self._batcher.close()

    # --- the personalised path -------------------------------------------------------------

    def pending(self) -> int:
        """Requests waiting for the model (cancelled ones until dropped)."""
        return self._batcher.pending

    def personalised(self, requests: list[Personal], explain: bool = True) -> list[Answer]:
        """Answers for a batch of personalised requests, one model call (see
        :class:`PersonalisedPath`); serialised with catalogue additions."""
        with self._model_lock:
            return self.path.answer(requests, explain)

    def prime(self, users: int = 4, timeout_s: float = 10.0) -> bool:
        """Run the model path once, through the model thread, before this service takes
        traffic: a lone request, then a batch of ``users``, for the bundle's first readers.
        A model's first calls pay one-off set-up (the model thread's first torch and FAISS
        calls, first allocations, the ranker's first predict); without this, the first
        readers a hot-swapped bundle or a canary answers wait for it, and a canary judged on
        a few dozen answers has that wait as its p99. Nothing is logged or counted: no store
        is read and no impression is made. Returns whether it ran; a failure is logged and
        the service still serves (its requests fall back as they would anyway). Over remote
        stages (Ray's chained topology) it does nothing: the stage deployments prime each
        bundle as they load it (:func:`recsys.serving.ray_app.prime_stages`)."""
        if self.primed:
            return True
        if self.stages is not None and not isinstance(self.stages, LocalStages):
            return False  # remote stages (Ray's chained topology) prime themselves on load
        ids, matrix = self.bundle.first_readers(users)
        requests = [
            Personal(u, matrix[row : row + 1], 10, set(), None, "personalized")
            for row, u in enumerate(ids)
        ]
        if not requests:
            return False
        deadline = time.monotonic() + timeout_s
        # no deadline on the requests themselves: the batcher sheds a request it expects to
        # miss its deadline, and what it expects comes from the lone first call's set-up
        futures = [self._batcher.submit(requests[0])]
        try:
            futures[0].result(timeout=timeout_s)
            futures = [self._batcher.submit(r) for r in requests]
            for future in futures:
                future.result(timeout=max(deadline - time.monotonic(), 0.0))
        except Exception as exc:  # the first real request meets the same error, and falls back
            for future in futures:
                future.cancel()  # still queued: dropped
            log.warning("bundle %s: priming the model path failed: %s", self.version, exc)
            return False
        finally:
            self._batcher.forget_costs()  # set-up is not what a real request costs
        self.primed = True
        return True

    def score_users(self, user_ids: list[str], k: int) -> list[tuple[str, Answer]]:
        """Top-``k`` lists without reasons for the users anything is known about (the
        bundle's history and their events; erased users are skipped): batch scoring."""
        reads = {u: self.reader(u) for u in user_ids}
        known = [(u, h) for u, (h, _, _) in reads.items() if h]
        if not known:
            return []
        matrix = self.history_matrix([h for _, h in known])
        requests = [  # the reader's marks count here too
            Personal(
                user,
                matrix[row : row + 1],
                k,
                self.catalogue.works.editions(self.indices(reads[user][1].unwanted)),
                None,
                "personalized",
                fewer=self.fewer_authors(reads[user][1]),
            )
            for row, (user, _) in enumerate(known)
        ]
        answers = self.personalised(requests, explain=False)
        return [(user, a) for (user, _), a in zip(known, answers, strict=True)]

    def _guarded(self, request: Personal, fallback: Any) -> Answer:
        """Run the model stages for ``request`` within the time budget; popularity answers on
        error or timeout, and at once when more requests wait than the model can answer in
        time (``overloaded``). A request that timed out, or whose caller left (the request
        path's :data:`CURRENT_CALLER`), is withdrawn: the model never works on answers nobody
        waits for, so it keeps personalising the load it can carry."""
        batcher = self._batcher
        if batcher.pending >= self.max_pending:
            return fallback("overloaded")  # a queue this deep cannot be answered in time
        budget = self.stage_timeout_s
        deadline = time.monotonic() + budget if math.isfinite(budget) else None
        caller = CURRENT_CALLER.get()
        if caller is not None and caller.gone:
            return fallback("caller_left")  # nobody reads it: the caller disconnected
        future = batcher.submit(request, deadline)
        if caller is not None:
            caller.waits_on(future)  # one leaving between the two: cancelled here, dropped
        try:
            return future.result(timeout=self.stage_timeout_s)
        except Overloaded:
            return fallback("overloaded")
        except CancelledError:
            return fallback("caller_left")  # nobody reads it: the caller disconnected
        except FutureTimeout:
            future.cancel()  # still queued: dropped; already running: finishes unused
            log.warning(
                "stage over its %.0f ms budget; popularity answers", self.stage_timeout_s * 1000
            )
            return fallback("timeout")
        except RecsysError:
            raise
        except Exception:
            log.exception("stage failed; popularity answers")
            return fallback("stage_error")

    # --- helpers ---------------------------------------------------------------------------

    def history_matrix(self, histories: list[list[str]]) -> sp.csr_matrix:
        """Histories as CSR rows over the live catalogue (model books and added ones)."""
        index = self.catalogue.index
        encoded = [np.array([index.get(b, 1) for b in h], dtype=np.int64) for h in histories]
        return history_matrix(encoded, len(self.catalogue.ids))

    def indices(self, book_ids: list[str]) -> set[int]:
        """Catalogue indices of the known ones among ``book_ids``."""
        return {i for i in (self.catalogue.index.get(b, 1) for b in book_ids) if i >= NUM_RESERVED}

    def book_index(self, book_id: str) -> int:
        idx = self.catalogue.index.get(book_id, 1)
        if idx < NUM_RESERVED or not self.catalogue.listed[idx]:
            raise UnknownBook(f"unknown book id '{book_id}'")
        return idx

    def add_books(self, books: list[dict[str, Any]]) -> None:
        """Make catalogue books the model never saw retrievable now: a book-tower vector from
        their side features (author, publisher, year, language, tags; the id is OOV)."""
        new = [b for b in books if str(b["book_id"]) not in self.catalogue.index]
        if not new:
            return
        features = transform_books(_book_frame(new), self.bundle.state)
        with torch.no_grad():
            vectors = self.bundle.book_tower(**features).numpy().astype(np.float32)
        with self._model_lock:
            if self.pipeline is not None:
                indices = self.pipeline.add_books(features, vectors)
            else:
                indices = self.retriever.add_books(vectors)
            for book, index in zip(new, indices, strict=True):
                assert self.catalogue.add(book) == index

    def user_history(self, user_id: str) -> list[str] | None:
        """Every book known for the user: the bundle's history, then events since (the store),
        without repeats. None for an erased user (served as unknown)."""
        return self.reader(user_id)[0]

    def reader(self, user_id: str) -> tuple[list[str] | None, Marks, Friends]:
        """:meth:`user_history`, the reader's marks (books to leave out of every personal
        list, authors to see less of) and what the readers they follow read, in one read of
        the store."""
        erased, events, marks, friends = self.stores.events.serving_reads(user_id)
        if erased:
            return None, Marks(), {}
        known = self.histories.get(user_id, [])
        history = list(dict.fromkeys([*known, *events])) if events else known
        return history or None, Marks.of(marks), self._friends(friends)

    def _friends(self, rows: list[tuple[str, str]]) -> Friends:
        """Each followee's latest :data:`FRIEND_BOOKS` books (their bundle history, then
        their events) from the store's (followee, book) rows."""
        events: dict[str, list[str]] = {}
        for friend, book in rows:
            events.setdefault(friend, [])
            if book:
                events[friend].append(book)
        return {
            friend: list(dict.fromkeys([*self.histories.get(friend, []), *books]))[-FRIEND_BOOKS:]
            for friend, books in events.items()
        }

    def friend_books(self, friends: Friends, seen: set[int]) -> dict[int, list[str]]:
        """Books (indices) the reader's followees read and the reader did not, each with
        the followees who read it, most read first (the "friends are reading" source)."""
        out: dict[int, list[str]] = {}
        for friend, books in friends.items():
            for index in self.indices(books):
                if index not in seen:
                    out.setdefault(index, []).append(friend)
        return dict(sorted(out.items(), key=lambda kv: -len(kv[1])))

    def fewer_authors(self, marks: Marks) -> frozenset[str]:
        """The authors of the books the reader asked for less of."""
        cat = self.catalogue
        named = (cat.authors[i] for i in self.indices(marks.fewer))
        return frozenset(str(a) for a in named if a is not None and str(a).strip())

    def _known_history(self, user_id: str | None) -> list[str] | None:
        """The user's history for re-ranking a list, or None (no user, or the store is
        unreachable: erasure cannot be checked, so the list is not personalised)."""
        if not user_id:
            return None
        try:
            return self.user_history(user_id)
        except StoreUnavailable:
            return None

    def candidates_of(
        self, user_id: str, matrix: sp.csr_matrix, friend_books: dict[int, list[str]] | None = None
    ) -> tuple[Candidates, torch.Tensor, np.ndarray, torch.Tensor]:
        """One reader's candidates, pair features, ranker scores and encoded history, in
        process (the console's preview; requests go through :meth:`personalised`), with the
        friends' books (:meth:`friend_books`) as served."""
        assert self.pipeline is not None, "a bundle without a ranker has no candidates"
        users = np.array([self.path.users.encode_one(user_id)])
        social = social_matrix([friend_books or {}], matrix.shape[1])
        with self._model_lock:
            return self.pipeline.stages(users, matrix, social=social)

    def user_vector(self, user_id: str, matrix: sp.csr_matrix) -> np.ndarray:
        """The two-tower's vector of one reader with this history."""
        users = np.array([self.path.users.encode_one(user_id)])
        with self._model_lock:
            features = self.retriever.features_from_matrix(users, matrix)
            return np.asarray(self.retriever.encode(features)[0])

    # --- endpoints -------------------------------------------------------------------------

    def sibling(self, bundle: Bundle) -> RecommendationService:
        """A service for another bundle sharing this one's stores, cache and settings (the
        variants of an experiment, a hot swap)."""
        return RecommendationService(bundle, self.stage_timeout_s, live=self.live)

    def allowed(
        self, filters: Filters | None, exclude: set[int]
    ) -> tuple[np.ndarray | None, list[str]]:
        """The request's filters and exclusions, then the business rules' (``require``,
        ``hidden``, ``expires``); the names of those rules."""
        allowed = self.catalogue.allowed(filters, exclude)
        bound = self.live.rules.bound(self.catalogue)
        if bound is None:
            return allowed, []
        return bound.restrict(allowed, time.time())

    def for_user(
        self,
        user_id: str,
        limit: int,
        exclude_ids: list[str],
        filters: Filters | None,
        retrieval_only: bool = False,
    ) -> Answer:
        try:
            history, marks, friends = self.reader(user_id)
        except StoreUnavailable:  # erasure cannot be checked: nothing personal until it can
            exclude = self.catalogue.works.editions(self.indices(exclude_ids))
            allowed, rules = self.allowed(filters, exclude)
            return _ruled(self.path.popular(limit, exclude, allowed, "store_unavailable"), rules)
        # the reader's "not for me" too; a book left out takes its other editions with it
        exclude = self.catalogue.works.editions(self.indices([*exclude_ids, *marks.unwanted]))
        allowed, rules = self.allowed(filters, exclude)
        fewer = self.fewer_authors(marks)
        if not history:
            fallback = self.path.popular(limit, exclude, allowed, "unknown_user", fewer=fewer)
            return _ruled(fallback, rules)
        matrix = self.history_matrix([history])
        seen = set(matrix.indices.tolist())
        personal = Personal(
            user_id,
            matrix,
            limit,
            exclude,
            allowed,
            "personalized",
            retrieval_only,
            rules,
            fewer,
            explore=True,
            friends=self.friend_books(friends, seen | exclude),
        )
        answer = self._guarded(
            personal,
            lambda reason: _ruled(
                self.path.popular(limit, exclude, allowed, reason, history=seen, fewer=fewer),
                rules,
            ),
        )
        answer.history_length = len(history)
        return answer

    def similar(
        self,
        book_id: str,
        limit: int,
        filters: Filters | None,
        user_id: str | None = None,
        preferences: list[str] | None = None,
    ) -> Answer:
        index = self.book_index(book_id)
        allowed, rules = self.allowed(filters, set())
        fetch = limit * 3 if (user_id or preferences) else limit + 10  # editions left out
        query = self.retriever.book_embeddings[[index]]
        top, scores = self.retriever.search(query, fetch, [{index}], allowed)
        books = [int(b) for b in top[0] if b >= 0]
        sims = [float(s) for s in scores[0][: len(books)]]
        stored = self._known_history(user_id)
        history = list(stored or []) + list(preferences or [])
        reader: list[int] = []
        if history and books:  # re-rank for the user: similarity + affinity to their reading
            matrix = self.history_matrix([history])
            reader = matrix.indices.tolist()
            user = np.array([self.bundle.state.users.encode_one(user_id) if user_id else 1])
            vector = self.retriever.encode(self.retriever.features_from_matrix(user, matrix))[0]
            affinity = self.retriever.book_embeddings[books] @ vector / self.retriever.temperature
            blended = np.asarray(sims) + 0.5 * affinity
            seen = set(reader)
            order = [i for i in np.argsort(-blended, kind="stable") if books[i] not in seen]
            books, sims = [books[i] for i in order], [float(blended[i]) for i in order]
        # other editions of the book are not "similar books"; one edition per work; for a
        # reader, nothing they read in another edition, and series in reading order
        works = self.catalogue.works
        seed = works.work_of(index)
        ranked = ((b, s) for b, s in zip(books, sims, strict=True) if works.work_of(b) != seed)
        check = self.path.offerable(set(), allowed, set(reader))
        picks = self.path.order.pick(ranked, reader, check, limit, in_order=bool(reader))
        books, sims = [p.book for p in picks], [p.score for p in picks]
        reason = f"similar to {self.path.title(index)}"
        return _ruled(Answer(books, sims, [reason] * len(books), "similar"), rules)

    def hybrid(
        self,
        user_id: str | None,
        history: list[str],
        seed_books: list[str],
        limit: int,
        filters: Filters | None,
    ) -> Answer:
        for book in seed_books:
            self.book_index(book)  # unknown seed books are a client error
        stored = self._known_history(user_id)
        combined = list(stored or []) + list(history) + list(seed_books)
        allowed, rules = self.allowed(filters, set())
        known = [b for b in combined if self.catalogue.index.get(b, 1) >= NUM_RESERVED]
        if not known:
            return _ruled(self.path.popular(limit, set(), allowed, "no_known_history"), rules)
        matrix = self.history_matrix([known])
        seen = set(matrix.indices.tolist())
        return self._guarded(
            Personal(user_id, matrix, limit, set(), allowed, "hybrid", rules=rules),
            lambda reason: _ruled(
                self.path.popular(limit, set(), allowed, reason, history=seen), rules
            ),
        )

    def trending(self, limit: int) -> Answer:
        """Books with the most time-decayed recent events, then the bundle's popularity
        (the cold start: before any event, trending is popularity)."""
        books: list[int] = []
        scores: list[float] = []
        reasons: list[str] = []
        allowed, rules = self.allowed(None, set())  # hidden, expired, required: here too
        trending = self.live.trending
        if trending is not None:
            self.live.refresh_trending()
            for book_id, score in trending.top(limit * 2):
                index = self.catalogue.index.get(book_id)
                shown = allowed is None or bool(allowed[index]) if index is not None else False
                if index is not None and self.catalogue.listed[index] and shown:
                    books.append(index)
                    scores.append(score)
                    reasons.append("trending now")
                    if len(books) == limit:
                        break
        if len(books) < limit:
            fill = self.path.popular(
                limit - len(books), set(books), allowed, None, taken=books, arranged=False
            )
            books += fill.books
            scores += [0.0] * len(fill.books)  # below every trending score
            reasons += fill.reasons
        return _ruled(Answer(books, scores, reasons, "trending"), rules)


# a reader's followees and each one's latest books (ids), oldest first
Friends = dict[str, list[str]]
FRIEND_BOOKS = FRIEND_EVENTS  # of each followee, their latest this many books count


@dataclass(frozen=True)
class Marks:
    """A reader's standing marks: books left out of their lists (not interested, disliked)
    and books whose author they want less of."""

    unwanted: list[str] = field(default_factory=list)
    fewer: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, rows: list[tuple[str, str]]) -> Marks:
        return cls(
            [b for b, kind in rows if kind in EXCLUDING_EVENT_TYPES],
            [b for b, kind in rows if kind in AUTHOR_EVENT_TYPES],
        )


def _ruled(answer: Answer, rules: list[str]) -> Answer:
    """``answer`` naming the rules that left books out before it was made."""
    answer.rules = [*rules, *(n for n in answer.rules if n not in rules)]
    return answer


def _book_frame(books: list[dict[str, Any]]) -> pl.DataFrame:
    """Catalogue rows as the book table the feature pipeline reads."""
    return pl.DataFrame(
        {
            "book_id": [str(b["book_id"]) for b in books],
            "authors": [b.get("authors") for b in books],
            "publisher": [b.get("publisher") for b in books],
            "year": [b.get("year") for b in books],
            "language": [b.get("language") for b in books],
            "tags": [list(b.get("tags") or []) for b in books],
        },
        schema={
            "book_id": pl.String,
            "authors": pl.String,
            "publisher": pl.String,
            "year": pl.Int32,
            "language": pl.String,
            "tags": pl.List(pl.String),
        },
    )
