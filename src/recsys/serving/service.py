"""RecommendationService: every route's logic and fallback decisions, in plain Python.

Both runners (uvicorn locally, Ray Serve when scaled out) call this class; no route logic lives
anywhere else. Unknown users without history, stage errors and stages over their time budget
are answered from popularity, and the answer says so.
"""

from __future__ import annotations

import logging
import threading
import time
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
from recsys.serving.batching import MicroBatcher
from recsys.serving.live import Live
from recsys.serving.schemas import Filters
from recsys.serving.stages import LocalStages, Stages

log = logging.getLogger(__name__)


class UnknownBook(RecsysError):
    """A book id that is not in the model's catalogue (HTTP 404)."""


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


class Catalogue:
    """Book metadata by vocabulary index, for filters and responses.

    ``books`` is the live catalogue (the store's, when serving has one; the bundle's
    otherwise). Model books missing from it were removed from the catalogue: never
    recommended.
    """

    def __init__(self, bundle: Bundle, books: pl.DataFrame | None = None) -> None:
        vocab = bundle.state.books
        table = bundle.books if books is None else books
        present = pl.DataFrame({"book_id": vocab.ids}).join(
            table.select("book_id").with_columns(present=pl.lit(True)),
            on="book_id",
            how="left",
            maintain_order="left",
        )
        frame = pl.DataFrame({"book_id": vocab.ids}).join(
            table, on="book_id", how="left", maintain_order="left"
        )
        pad: list[Any] = [None] * NUM_RESERVED
        self.index = {b: i + NUM_RESERVED for i, b in enumerate(vocab.ids.to_list())}
        self.ids: list[str | None] = pad + vocab.ids.to_list()
        self.titles: list[str | None] = pad + frame.get_column("title").to_list()
        self.authors: list[str | None] = pad + frame.get_column("authors").to_list()
        years = frame.get_column("year").fill_null(-1).to_numpy()
        self.years = np.concatenate([[-1] * NUM_RESERVED, years])
        self.languages = np.array(pad + frame.get_column("language").to_list(), dtype=object)
        self.listed = np.concatenate(
            [[False] * NUM_RESERVED, present.get_column("present").fill_null(False).to_numpy()]
        )
        # books removed from the catalogue (kept current by update/remove; read per request)
        self.delisted = int((~self.listed[NUM_RESERVED:]).sum())

    def update(self, book: dict[str, Any]) -> None:
        """A catalogue edit (create or update) of a book the model knows."""
        index = self.index.get(str(book["book_id"]))
        if index is None:
            return
        self.titles[index], self.authors[index] = book.get("title"), book.get("authors")
        year = book.get("year")
        self.years[index] = -1 if year is None else int(year)
        self.languages[index] = book.get("language")
        self.listed[index] = True
        self.delisted = int((~self.listed[NUM_RESERVED:]).sum())

    def add(self, book: dict[str, Any]) -> int:
        """Append a book the model never saw; returns its index."""
        index = len(self.ids)
        self.index[str(book["book_id"])] = index
        self.ids.append(str(book["book_id"]))
        self.titles.append(book.get("title"))
        self.authors.append(book.get("authors"))
        year = book.get("year")
        self.years = np.append(self.years, -1 if year is None else int(year))
        self.languages = np.append(self.languages, np.array([book.get("language")], dtype=object))
        self.listed = np.append(self.listed, True)
        return index

    def remove(self, book_id: str) -> None:
        index = self.index.get(book_id)
        if index is not None:
            self.listed[index] = False
            self.delisted = int((~self.listed[NUM_RESERVED:]).sum())

    def allowed(self, filters: Filters | None, exclude: set[int]) -> np.ndarray | None:
        """Bool per book index, or None when nothing is filtered."""
        if filters is None and not exclude and not self.delisted:
            return None
        mask = self.listed.copy()
        mask[:NUM_RESERVED] = False
        if exclude:
            mask[list(exclude)] = False
        if filters is not None:
            if filters.year_min is not None:
                mask &= self.years >= filters.year_min
            if filters.year_max is not None:
                mask &= (self.years >= 0) & (self.years <= filters.year_max)
            if filters.languages:
                mask &= np.isin(self.languages, filters.languages)
            if filters.authors:
                wanted = [a.lower() for a in filters.authors]
                mask &= np.array(
                    [a is not None and any(w in a.lower() for w in wanted) for a in self.authors]
                )
        return mask


class RecommendationService:
    """Answers every endpoint from one bundle.

    Args:
        bundle: a verified bundle.
        stage_timeout_s: time budget of the personalised path before popularity answers.
        stages: where retrieval and ranking run (default: in this process, from ``bundle``).
        max_batch: most concurrent personalised requests answered by one model call.
        live: stores, trending and cache (events, catalogue edits, erasure); None serves the
            bundle alone.
    """

    def __init__(
        self,
        bundle: Bundle,
        stage_timeout_s: float = 0.1,
        stages: Stages | None = None,
        max_batch: int = 16,
        live: Live | None = None,
    ) -> None:
        self.bundle = bundle
        self.version = bundle.version
        self.stage_timeout_s = stage_timeout_s
        self.pipeline = bundle.two_stage() if bundle.has_ranker else None
        # one retriever: books added to the catalogue are added to it once
        self.retriever = self.pipeline.retriever if self.pipeline else bundle.recommender()
        self._model_lock = threading.Lock()  # model calls vs. adding books
        self.stages: Stages | None = stages
        if self.stages is None and self.pipeline is not None:
            self.stages = LocalStages(self.pipeline)
        self.popularity = bundle.popularity
        self.live = live if live is not None else Live()
        self.store = self.live.store
        if self.store is not None:
            self.store.seed_books(bundle.books)
            self.catalogue = Catalogue(bundle, self.store.books_frame())
            # books added through the API that this bundle was not trained on
            self.add_books(self.store.added_books())
        else:
            self.catalogue = Catalogue(bundle)
        self.histories: dict[str, list[str]] = dict(bundle.known_histories.iter_rows())
        # One model thread, micro-batching concurrent requests (see recsys.serving.batching).
        self._batcher: MicroBatcher[Personal, Answer] = MicroBatcher(
            self.personalised, max_batch=max_batch, name="recsys-stages"
        )
        # Fault injection for tests and drills: the next stage raises / sleeps this long.
        self.fail_next_stage = False
        self.slow_next_stage_s = 0.0

    def close(self) -> None:
        # Queued requests still run (a request in flight during a hot swap still answers).
        self._batcher.close()

    # --- helpers ---------------------------------------------------------------------------

    def history_matrix(self, histories: list[list[str]]) -> sp.csr_matrix:
        """Histories as CSR rows over the live catalogue (model books and added ones)."""
        index = self.catalogue.index
        encoded = [np.array([index.get(b, 1) for b in h], dtype=np.int64) for h in histories]
        return history_matrix(encoded, len(self.catalogue.ids))

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
        frame = pl.DataFrame(
            {
                "book_id": [str(b["book_id"]) for b in new],
                "authors": [b.get("authors") for b in new],
                "publisher": [b.get("publisher") for b in new],
                "year": [b.get("year") for b in new],
                "language": [b.get("language") for b in new],
                "tags": [list(b.get("tags") or []) for b in new],
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
        features = transform_books(frame, self.bundle.state)
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
        if self.store is None:
            return self.histories.get(user_id)
        erased, events = self.store.serving_history(user_id)
        if erased:
            return None
        known = self.histories.get(user_id, [])
        if not events:
            return known or None
        return list(dict.fromkeys([*known, *events]))

    def title(self, index: int) -> str:
        return str(self.catalogue.titles[index] or self.catalogue.ids[index])

    def popular(
        self,
        limit: int,
        exclude: set[int],
        allowed: np.ndarray | None,
        reason: str | None,
        source: str = "popularity",
    ) -> Answer:
        books = []
        listed = self.catalogue.listed
        for book in self.popularity.order:
            if book not in exclude and listed[book] and (allowed is None or allowed[book]):
                books.append(int(book))
                if len(books) == limit:
                    break
        scores = [float(self.popularity.scores[b]) for b in books]
        return Answer(books, scores, ["popular with readers"] * len(books), source, reason)

    def _guarded(self, request: Personal, fallback: Any) -> Answer:
        """Run the model stages for ``request`` within the time budget; popularity answers on
        error or timeout."""
        future = self._batcher.submit(request)
        try:
            return future.result(timeout=self.stage_timeout_s)
        except FutureTimeout:
            log.warning(
                "stage over its %.0f ms budget; popularity answers", self.stage_timeout_s * 1000
            )
            return fallback("timeout")
        except RecsysError:
            raise
        except Exception:
            log.exception("stage failed; popularity answers")
            return fallback("stage_error")

    def personalised(self, requests: list[Personal], explain: bool = True) -> list[Answer]:
        """Two-stage (or retrieval-only) answers for a batch of histories, one model call.

        The one path behind every personalised answer: online requests (micro-batched) and
        offline batch scoring (``explain=False`` skips the reasons).
        """
        with self._model_lock:
            return self._personalised(requests, explain)

    def _personalised(self, requests: list[Personal], explain: bool) -> list[Answer]:
        if self.fail_next_stage:
            self.fail_next_stage = False
            raise RuntimeError("injected stage failure")
        if self.slow_next_stage_s:
            delay, self.slow_next_stage_s = self.slow_next_stage_s, 0.0
            time.sleep(delay)
        users = np.array(
            [self.bundle.state.users.encode_one(r.user_id) if r.user_id else 1 for r in requests]
        )
        n_books = self.retriever.n_books
        if len(requests) == 1 and requests[0].matrix.shape[1] == n_books:
            matrix = requests[0].matrix  # the common case under light load
        else:
            stacked = sp.vstack([r.matrix for r in requests], format="csr")
            # rows built before a book was added are narrower: widen them to the catalogue
            matrix = sp.csr_matrix(
                (stacked.data, stacked.indices, stacked.indptr),
                shape=(stacked.shape[0], n_books),
            )
        ranked = [r.retrieval_only is False for r in requests]
        if self.pipeline is not None and any(ranked) and not all(ranked):
            # a batch mixing ranked and retrieval-only requests: answer each group apart
            merged: dict[int, Answer] = {}
            for flag in (True, False):
                rows = [i for i, r in enumerate(ranked) if r is flag]
                part = self._personalised([requests[i] for i in rows], explain)
                merged.update(zip(rows, part, strict=True))
            return [merged[i] for i in range(len(requests))]
        if self.pipeline is not None and self.stages is not None and all(ranked):
            started = time.perf_counter()
            retrieved = self.stages.retrieve(users, matrix)
            retrieved_at = time.perf_counter()
            scores = self.stages.rank(retrieved)
            timings = {
                "retrieval": (retrieved_at - started) * 1000,
                "ranking": (time.perf_counter() - retrieved_at) * 1000,
            }
            answers = [
                self._ranked(
                    req, retrieved.candidates, retrieved.history, scores, row, timings, explain
                )
                for row, req in enumerate(requests)
            ]
        else:
            vectors = self.retriever.encode(self.retriever.features_from_matrix(users, matrix))
            answers = []
            for row, req in enumerate(requests):
                seen = set(req.matrix.indices.tolist())
                top, top_scores = self.retriever.search(
                    vectors[row : row + 1], req.limit, [seen | req.exclude], req.allowed
                )
                books_list = [int(b) for b in top[0] if b >= 0]
                answers.append(
                    Answer(
                        books_list,
                        [float(s) for s in top_scores[0][: len(books_list)]],
                        ["matches your reading history"] * len(books_list) if explain else [],
                        req.source,
                    )
                )
        for req, answer in zip(requests, answers, strict=True):
            answer.from_model = len(answer.books)
            if len(answer.books) < req.limit:  # filters left too few: top up from popularity
                seen = set(req.matrix.indices.tolist())
                extra = self.popular(
                    req.limit - len(answer.books),
                    seen | req.exclude | set(answer.books),
                    req.allowed,
                    None,
                )
                answer.books += extra.books
                answer.scores += extra.scores
                answer.reasons += extra.reasons if explain else []
        return answers

    def _ranked(
        self,
        req: Personal,
        cands: Candidates,
        history: torch.Tensor,
        scores: np.ndarray,
        row: int,
        timings: dict[str, float],
        explain: bool = True,
    ) -> Answer:
        """One user's answer from the ranker scores of its candidates (row ``row``)."""
        assert self.pipeline is not None
        order = np.argsort(-scores[row], kind="stable")
        books = cands.books[row][order]
        ranked = [
            (int(b), float(scores[row][i]))
            for b, i in zip(books, order, strict=True)
            if b >= 0 and b not in req.exclude and (req.allowed is None or req.allowed[b])
        ][: req.limit]
        from_cooc = {
            int(b) for b, c in zip(cands.books[row], cands.from_cooc[row], strict=True) if c
        }
        if not explain:
            return Answer(
                [b for b, _ in ranked], [s for _, s in ranked], [], req.source, None, timings
            )
        chosen = np.array([b for b, _ in ranked], dtype=np.int64)
        why, kinds = self.pipeline.reasons(
            history[row], chosen, np.array([b in from_cooc for b in chosen])
        )
        reasons = [
            f"readers of {self.title(w)} also read this"
            if k == "co-read"
            else f"because you read {self.title(w)}"
            for w, k in zip(why, kinds, strict=True)
        ]
        return Answer(
            [b for b, _ in ranked], [s for _, s in ranked], reasons, req.source, None, timings
        )

    # --- endpoints -------------------------------------------------------------------------

    def sibling(self, bundle: Bundle) -> RecommendationService:
        """A service for another bundle sharing this one's stores, cache and settings (the
        variants of an experiment)."""
        return RecommendationService(bundle, self.stage_timeout_s, live=self.live)

    def for_user(
        self,
        user_id: str,
        limit: int,
        exclude_ids: list[str],
        filters: Filters | None,
        retrieval_only: bool = False,
    ) -> Answer:
        exclude = {i for i in (self.catalogue.index.get(b, 1) for b in exclude_ids) if i >= 2}
        allowed = self.catalogue.allowed(filters, exclude)
        history = self.user_history(user_id)
        if not history:
            return self.popular(limit, exclude, allowed, "unknown_user")
        matrix = self.history_matrix([history])
        seen = set(matrix.indices.tolist())
        return self._guarded(
            Personal(user_id, matrix, limit, exclude, allowed, "personalized", retrieval_only),
            lambda reason: self.popular(limit, exclude | seen, allowed, reason),
        )

    def similar(
        self,
        book_id: str,
        limit: int,
        filters: Filters | None,
        user_id: str | None = None,
        preferences: list[str] | None = None,
    ) -> Answer:
        index = self.book_index(book_id)
        allowed = self.catalogue.allowed(filters, set())
        fetch = limit * 3 if (user_id or preferences) else limit
        query = self.retriever.book_embeddings[[index]]
        top, scores = self.retriever.search(query, fetch, [{index}], allowed)
        books = [int(b) for b in top[0] if b >= 0]
        sims = [float(s) for s in scores[0][: len(books)]]
        stored = self.user_history(user_id) if user_id else None
        history = list(stored or []) + list(preferences or [])
        if history and books:  # re-rank for the user: similarity + affinity to their reading
            matrix = self.history_matrix([history])
            user = np.array([self.bundle.state.users.encode_one(user_id) if user_id else 1])
            vector = self.retriever.encode(self.retriever.features_from_matrix(user, matrix))[0]
            affinity = self.retriever.book_embeddings[books] @ vector / self.retriever.temperature
            blended = np.asarray(sims) + 0.5 * affinity
            seen = set(matrix.indices.tolist())
            order = [i for i in np.argsort(-blended, kind="stable") if books[i] not in seen][:limit]
            books, sims = [books[i] for i in order], [float(blended[i]) for i in order]
        books, sims = books[:limit], sims[:limit]
        reason = f"similar to {self.title(index)}"
        return Answer(books, sims, [reason] * len(books), "similar")

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
        stored = self.user_history(user_id) if user_id else None
        combined = list(stored or []) + list(history) + list(seed_books)
        allowed = self.catalogue.allowed(filters, set())
        known = [b for b in combined if self.catalogue.index.get(b, 1) >= NUM_RESERVED]
        if not known:
            return self.popular(limit, set(), allowed, "no_known_history")
        matrix = self.history_matrix([known])
        seen = set(matrix.indices.tolist())
        return self._guarded(
            Personal(user_id, matrix, limit, set(), allowed, "hybrid"),
            lambda reason: self.popular(limit, seen, allowed, reason),
        )

    def trending(self, limit: int) -> Answer:
        """Books with the most time-decayed recent events, then the bundle's popularity
        (the cold start: before any event, trending is popularity)."""
        books: list[int] = []
        scores: list[float] = []
        reasons: list[str] = []
        trending = self.live.trending
        if trending is not None:
            self.live.refresh_trending()
            for book_id, score in trending.top(limit * 2):
                index = self.catalogue.index.get(book_id)
                if index is not None and self.catalogue.listed[index]:
                    books.append(index)
                    scores.append(score)
                    reasons.append("trending now")
                    if len(books) == limit:
                        break
        if len(books) < limit:
            fill = self.popular(limit - len(books), set(books), None, None)
            books += fill.books
            scores += [0.0] * len(fill.books)  # below every trending score
            reasons += fill.reasons
        return Answer(books, scores, reasons, "trending")
