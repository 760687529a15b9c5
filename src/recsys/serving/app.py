"""The FastAPI application: routes, schemas, request ids, metrics, error mapping.

Runners: uvicorn (`recsys serve`, one process, the embedded default); Ray Serve wraps the same
app. Route logic lives in :class:`RecommendationService`.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import structlog
from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.concurrency import run_in_threadpool

from recsys.errors import RecsysError
from recsys.serving.auth import CATALOGUE_WRITE, Forbidden, Principal, Unauthorized
from recsys.serving.experiments import Experiments, FileWatcher
from recsys.serving.ratelimit import RateLimited
from recsys.serving.schemas import (
    MAX_LIMIT,
    Book,
    BookCreate,
    BookIn,
    BookList,
    Erasure,
    EventBatch,
    EventIn,
    EventsAccepted,
    FeedbackIn,
    HistoryItem,
    HybridRequest,
    Metadata,
    Recommendation,
    RecommendationResponse,
    RecommendRequest,
    SimilarBooksV2Request,
    SimilarRequest,
    UserHistory,
    UserProfile,
)
from recsys.serving.service import Answer, RecommendationService, UnknownBook
from recsys.stores.sql import Event, Store

logger = structlog.get_logger("recsys.serving")
TRANSIENT = ("timeout", "stage_error")  # fallbacks never cached


class BadVariant(RecsysError):
    """An X-Experiment-Variant that names no variant of the active experiment (HTTP 422)."""


class UnknownUser(RecsysError):
    """A user id nothing is known about (HTTP 404)."""


class UnknownEventBook(RecsysError):
    """An event about a book not in the catalogue (HTTP 422)."""


class BookExists(RecsysError):
    """POST /books of an existing id (HTTP 409)."""


class StoreDisabled(RecsysError):
    """An endpoint that needs the store on a server without one (HTTP 503)."""


class Metrics:
    """Prometheus metrics of one app (own registry, so several apps can live in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "recsys_requests",
            "Requests by endpoint, source and status",
            ["endpoint", "source", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "recsys_request_latency_seconds",
            "Request latency",
            ["endpoint", "source"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        self.fallbacks = Counter(
            "recsys_fallbacks",
            "Answers served by the fallback, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.errors = Counter(
            "recsys_errors",
            "Error responses by endpoint and status",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.swaps = Counter(
            "recsys_bundle_swaps",
            "Hot swaps of the bundle, by result (loaded, refused)",
            ["result"],
            registry=self.registry,
        )
        self.events = Counter(
            "recsys_events_stored", "Events stored (duplicates excluded)", registry=self.registry
        )
        self.cache = Counter(
            "recsys_cache_lookups",
            "Response cache lookups by result (l1, l2, miss)",
            ["result"],
            registry=self.registry,
        )
        self.cache_hit_ratio = Gauge(
            "recsys_cache_hit_ratio",
            "Share of cache lookups answered from the cache (either level) since start",
            registry=self.registry,
        )
        self._lookups = [0, 0]  # hits, total
        self.impressions = Counter(
            "recsys_experiment_impressions",
            "Lists served under an experiment",
            ["experiment", "variant"],
            registry=self.registry,
        )
        self.feedback = Counter(
            "recsys_feedback", "Feedback received, by type", ["type"], registry=self.registry
        )
        self.service = Histogram(
            "recsys_service_latency_seconds",
            "Service call latency (everything but HTTP) by endpoint",
            ["endpoint"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        self.stage = Histogram(
            "recsys_stage_latency_seconds",
            "Model stage latency (retrieval, ranking) as seen by the service",
            ["stage"],
            registry=self.registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
        )

    def cache_lookup(self, where: str) -> None:
        """Count a cache lookup (``l1``, ``l2`` or ``miss``) and update the hit ratio."""
        self.cache.labels(where).inc()
        self._lookups[1] += 1
        self._lookups[0] += where != "miss"
        self.cache_hit_ratio.set(self._lookups[0] / self._lookups[1])


class BodyLimit:
    """Pure ASGI middleware: request bodies over ``limit()`` bytes get 413, whether announced
    by Content-Length or streamed."""

    def __init__(self, app: Any, limit: Callable[[], int]) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit()
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._reject(send, limit)
            return
        # Read the whole body first (bounded by the limit), then replay it to the app.
        messages, received = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                messages.append(message)
                break
            received += len(message.get("body", b""))
            if received > limit:
                await self._reject(send, limit)
                return
            messages.append(message)
            if not message.get("more_body", False):
                break
        replay = iter(messages)

        async def replayed() -> Any:
            try:
                return next(replay)
            except StopIteration:
                return await receive()

        await self.app(scope, replayed, send)

    @staticmethod
    async def _reject(send: Any, limit: int) -> None:
        body = json.dumps({"detail": f"request body over {limit} bytes"}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})


def create_app(load: Callable[[], RecommendationService], echo_request_id: bool = True) -> FastAPI:
    """Build the app; ``load`` returns the service (called once at start-up).

    ``echo_request_id``: set ``X-Request-ID`` on responses. Ray Serve's proxy does that itself
    (and passes the id it honoured or generated to the app), so the Ray runner turns it off.
    """
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        svc = await run_in_threadpool(load)
        app.state.service = svc
        app.state.experiments = Experiments(
            svc.sibling, svc, lambda new: setattr(app.state, "service", new)
        )
        watcher = None
        if svc.live.experiments_file:
            watcher = await run_in_threadpool(
                FileWatcher,
                svc.live.experiments_file,
                app.state.experiments,
                svc.live.experiments_poll_s,
            )
        app.state.experiments_watcher = watcher
        yield
        if watcher is not None:
            watcher.stop()
        app.state.service.close()

    async def guard(request: Request) -> None:
        """Every API route: who is calling (bearer token), and their rate limit."""
        live = request.app.state.service.live
        principal = live.auth.principal(request.headers.get("authorization"))
        request.state.principal = principal
        if live.limiter is not None:
            identity = (
                f"sub:{principal.subject}"
                if principal is not None and live.auth.enabled
                else f"ip:{request.client.host if request.client else '-'}"
            )
            route = request.scope.get("route")
            live.limiter.check(identity, getattr(route, "path", request.url.path))

    app = FastAPI(
        title="recsys",
        version="1",
        lifespan=lifespan,
        dependencies=[Depends(guard)],
        description="Book recommendations: two-stage retrieval and ranking with "
        "popularity fallback.",
    )
    app.state.metrics = metrics

    def body_limit() -> int:
        svc = getattr(app.state, "service", None)
        return int(svc.live.max_body_bytes) if svc is not None else 1_000_000

    app.add_middleware(BodyLimit, limit=body_limit)

    @app.middleware("http")
    async def request_context(request: Request, call_next: Any) -> Response:
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        request.state.request_id = request_id
        request.state.source = "-"
        started = time.perf_counter()
        response: Response = await call_next(request)
        elapsed = time.perf_counter() - started
        route = request.scope.get("route")
        endpoint = getattr(route, "path", "unmatched")
        metrics.requests.labels(endpoint, request.state.source, str(response.status_code)).inc()
        metrics.latency.labels(endpoint, request.state.source).observe(elapsed)
        if response.status_code >= 400:
            metrics.errors.labels(endpoint, str(response.status_code)).inc()
        if echo_request_id:
            response.headers["X-Request-ID"] = request_id
        logger.info(
            "request",
            request_id=request_id,
            method=request.method,
            endpoint=endpoint,
            status=response.status_code,
            source=request.state.source,
            latency_ms=round(elapsed * 1000, 2),
        )
        return response

    # Client errors: status per exception type (a subclass before RecsysError's 400).
    statuses: dict[type[RecsysError], int] = {
        UnknownBook: 404,
        UnknownUser: 404,
        BadVariant: 422,
        UnknownEventBook: 422,
        BookExists: 409,
        Unauthorized: 401,
        Forbidden: 403,
        RateLimited: 429,
        StoreDisabled: 503,
    }

    async def client_error(request: Request, exc: Exception) -> JSONResponse:
        status = next(code for kind, code in statuses.items() if isinstance(exc, kind))
        headers = {}
        if isinstance(exc, Unauthorized):
            headers["WWW-Authenticate"] = "Bearer"
        if isinstance(exc, RateLimited):
            headers["Retry-After"] = str(exc.retry_after)
        return JSONResponse(status_code=status, content={"detail": str(exc)}, headers=headers)

    for kind in statuses:
        app.add_exception_handler(kind, client_error)

    @app.exception_handler(RecsysError)
    async def bad_request(request: Request, exc: RecsysError) -> JSONResponse:
        return JSONResponse(status_code=400, content={"detail": str(exc)})

    def service(request: Request) -> RecommendationService:
        svc: RecommendationService = request.app.state.service
        return svc

    def principal(request: Request) -> Principal | None:
        who: Principal | None = getattr(request.state, "principal", None)
        return who

    def may_act(request: Request, user_id: str, scope: str) -> Principal:
        return service(request).live.auth.require_user(principal(request), user_id, scope)

    async def respond(
        request: Request,
        endpoint: str,
        call: Callable[[RecommendationService], Answer],
        chosen: RecommendationService | None = None,
    ) -> RecommendationResponse:
        # One service object per request: a hot swap in between never mixes two bundles.
        svc = chosen or service(request)
        started = time.perf_counter()
        answer = await run_in_threadpool(call, svc)
        metrics.service.labels(endpoint).observe(time.perf_counter() - started)
        for stage, ms in answer.timings_ms.items():
            metrics.stage.labels(stage).observe(ms / 1000)
        request.state.source = answer.source
        if answer.fallback_reason:
            metrics.fallbacks.labels(answer.fallback_reason).inc()
        cat = svc.catalogue
        items = [
            Recommendation(
                book_id=str(cat.ids[b]),
                title=cat.titles[b],
                author=cat.authors[b],
                confidence_score=round(float(s), 6),
                reasoning=r,
            )
            for b, s, r in zip(answer.books, answer.scores, answer.reasons, strict=True)
        ]
        meta = Metadata(
            source=answer.source,  # type: ignore[arg-type]
            bundle_version=svc.version,
            latency_ms=round((time.perf_counter() - started) * 1000, 3),
            request_id=request.state.request_id,
            fallback_reason=answer.fallback_reason,
        )
        return RecommendationResponse(recommendations=items, metadata=meta)

    @app.post("/recommendations/users/{user_id}", response_model=RecommendationResponse)
    async def user_recommendations(
        request: Request, user_id: str, body: RecommendRequest | None = None
    ) -> Response:
        """Personalised recommendations from everything known about the user (their history in
        the bundle and their events since); popularity if unknown. Cached per user and
        parameters until the user's next event, a bundle swap or the TTL."""
        may_act(request, user_id, "recs:read:any")
        req = body or RecommendRequest.model_validate({})
        forced = request.headers.get("x-experiment-variant")
        try:
            arm = request.app.state.experiments.assign(user_id, forced)
        except RecsysError as exc:
            raise BadVariant(str(exc)) from None
        svc: RecommendationService = arm.service
        experiment = {"experiment": arm.experiment, "variant": arm.variant}
        cache, params = svc.live.cache, {**req.model_dump(mode="json"), **experiment}
        if cache is not None:
            started = time.perf_counter()
            if cache.redis is None:
                hit, where = cache.get(svc.version, user_id, params)
            else:
                hit, where = await run_in_threadpool(cache.get, svc.version, user_id, params)
            metrics.cache_lookup(where)
            if hit is not None:
                cached = json.loads(hit)
                cached["metadata"].update(
                    request_id=request.state.request_id,
                    latency_ms=round((time.perf_counter() - started) * 1000, 3),
                    cache=where,
                )
                request.state.source = cached["metadata"]["source"]
                impression(svc, user_id, arm, cached)
                return JSONResponse(cached)
        response = await respond(
            request,
            "user",
            lambda svc: svc.for_user(
                user_id, req.limit, req.exclude, req.filters, arm.retrieval_only
            ),
            svc,
        )
        response.metadata.experiment, response.metadata.variant = arm.experiment, arm.variant
        if cache is not None and response.metadata.fallback_reason not in TRANSIENT:
            cache.put(svc.version, user_id, params, response.model_dump_json())
        answer = response.model_dump(mode="json")
        impression(svc, user_id, arm, answer)
        return JSONResponse(answer)

    def impression(
        svc: RecommendationService, user_id: str, arm: Any, body: dict[str, Any]
    ) -> None:
        """Log a list served under an experiment (written in the background)."""
        if arm.experiment is None or svc.live.impressions is None:
            return
        svc.live.impressions.add(
            {
                "request_id": body["metadata"]["request_id"],
                "at": time.time(),
                "user_id": user_id,
                "experiment": arm.experiment,
                "variant": arm.variant,
                "books": json.dumps([i["book_id"] for i in body["recommendations"]]),
            }
        )
        metrics.impressions.labels(arm.experiment, arm.variant).inc()

    @app.post("/feedback", status_code=202)
    async def post_feedback(request: Request, body: FeedbackIn) -> dict[str, str]:
        """A reader's reaction to a served list (``request_id`` of that response):
        ``click`` counts toward the experiment's click-through rate."""
        may_act(request, body.user_id, "events:write:any")
        store = store_of(service(request))
        await run_in_threadpool(
            store.log_feedback, body.request_id, body.user_id, body.book_id, body.type
        )
        metrics.feedback.labels(body.type).inc()
        return {"status": "recorded"}

    @app.post("/recommendations/books/{book_id}", response_model=RecommendationResponse)
    async def similar_books(
        request: Request, book_id: str, body: SimilarRequest | None = None
    ) -> RecommendationResponse:
        """Books similar to one book (404 if the book is unknown)."""
        req = body or SimilarRequest.model_validate({})
        return await respond(
            request, "similar", lambda svc: svc.similar(book_id, req.limit, req.filters)
        )

    @app.post("/v2/recommendations/similar-books", response_model=RecommendationResponse)
    async def similar_books_v2(
        request: Request, body: SimilarBooksV2Request
    ) -> RecommendationResponse:
        """Similar books, re-ranked for the user in ``user_context`` when given."""
        ctx = body.user_context
        if ctx is not None and ctx.user_id:
            may_act(request, ctx.user_id, "recs:read:any")
        return await respond(
            request,
            "similar_v2",
            lambda svc: svc.similar(
                body.book_id,
                body.limit,
                None,
                ctx.user_id if ctx else None,
                ctx.preferences if ctx else None,
            ),
        )

    @app.post("/recommendations/hybrid", response_model=RecommendationResponse)
    async def hybrid(request: Request, body: HybridRequest) -> RecommendationResponse:
        """A known user and/or an anonymous history and/or seed books, blended into one list."""
        if body.user_id:
            may_act(request, body.user_id, "recs:read:any")
        return await respond(
            request,
            "hybrid",
            lambda svc: svc.hybrid(
                body.user_id, body.history, body.seed_books, body.limit, body.filters
            ),
        )

    @app.get("/recommendations/trending", response_model=RecommendationResponse)
    async def trending(
        request: Request, limit: int = Query(10, ge=1, le=MAX_LIMIT)
    ) -> RecommendationResponse:
        """Popular books."""
        return await respond(request, "trending", lambda svc: svc.trending(limit))

    # --- events, users, catalogue ----------------------------------------------------------

    def store_of(svc: RecommendationService) -> Store:
        if svc.store is None:
            raise StoreDisabled("this server runs without a store (store.url=null)")
        return svc.store

    @app.post("/events", status_code=202, response_model=EventsAccepted)
    async def post_events(request: Request, body: EventIn | EventBatch) -> EventsAccepted:
        """Record reading events (one, or ``{"events": [...]}`` up to 1000), durably. The
        user's next recommendation uses them; ``event_id`` makes retries idempotent."""
        svc = service(request)
        store = store_of(svc)
        batch = body.events if isinstance(body, EventBatch) else [body]
        for user in sorted({e.user_id for e in batch}):
            may_act(request, user, "events:write:any")

        def known(book_id: str) -> bool:
            index = svc.catalogue.index.get(book_id)
            if index is not None:
                return bool(svc.catalogue.listed[index])
            return store.book(book_id) is not None

        unknown = sorted({e.book_id for e in batch if not known(e.book_id)})
        if unknown:
            raise UnknownEventBook(
                f"unknown book id(s) {unknown[:5]}{' …' if len(unknown) > 5 else ''}; "
                "add books to the catalogue first (POST /books)"
            )
        now = time.time()
        rows = [
            Event(e.user_id, e.book_id, e.type, e.timestamp or now, e.value, e.event_id or "")
            for e in batch
        ]
        stored, duplicates = await run_in_threadpool(store.append, rows)
        live = svc.live
        for event in rows:
            if live.trending is not None:
                live.trending.add(event.book_id, event.type, event.ts, now)
        if live.cache is not None:
            for user in {e.user_id for e in rows}:
                live.cache.invalidate_user(user, svc.version)
        metrics.events.inc(stored)
        return EventsAccepted(stored=stored, duplicates=duplicates)

    def user_events(svc: RecommendationService, user_id: str) -> list[tuple[str, float, str]]:
        """The user's history events (book, time, type): one erasure check and one read.
        UnknownUser (404) when nothing is known or the user was erased."""
        store = store_of(svc)
        if store.is_deleted(user_id):
            raise UnknownUser(f"unknown user '{user_id}'")
        events = store.history(user_id)
        if user_id not in svc.histories and not events and store.user(user_id) is None:
            raise UnknownUser(f"unknown user '{user_id}'")
        return events

    @app.get("/users/{user_id}", response_model=UserProfile)
    async def get_user(request: Request, user_id: str) -> UserProfile:
        """What is known about a user (404 when nothing is, or after erasure)."""
        may_act(request, user_id, "users:read:any")
        svc = service(request)
        events = await run_in_threadpool(user_events, svc, user_id)
        known = svc.histories.get(user_id, [])
        merged = dict.fromkeys([*known, *(b for b, _, _ in events)])  # as served
        return UserProfile(
            user_id=user_id,
            in_model=user_id in svc.histories,
            history_length=len(merged),
            events=len(events),
        )

    @app.get("/users/{user_id}/history", response_model=UserHistory)
    async def get_history(
        request: Request, user_id: str, limit: int = Query(200, ge=1, le=1000)
    ) -> UserHistory:
        """The user's reading history, most recent last: the bundle's, then their events."""
        may_act(request, user_id, "users:read:any")
        svc = service(request)
        events = await run_in_threadpool(user_events, svc, user_id)
        items = [
            HistoryItem(book_id=b, title=book_title(svc, b), source="bundle")
            for b in svc.histories.get(user_id, [])
        ]
        items += [
            HistoryItem(book_id=b, title=book_title(svc, b), source="event", type=k, timestamp=t)
            for b, t, k in events
        ]
        return UserHistory(user_id=user_id, history=items[-limit:])

    def book_title(svc: RecommendationService, book_id: str) -> str | None:
        index = svc.catalogue.index.get(book_id)
        if index is not None:
            return svc.catalogue.titles[index]
        book = svc.store.book(book_id) if svc.store is not None else None
        return book["title"] if book else None

    @app.delete("/users/{user_id}", response_model=Erasure)
    async def delete_user(request: Request, user_id: str) -> Erasure:
        """GDPR erasure: the user's events and profile are deleted, cached answers purged,
        the id suppressed from later exports and batch outputs, and an audit entry written
        (actor from ``X-Actor``; the subject only as a salted hash)."""
        who = may_act(request, user_id, "users:delete:any")
        svc = service(request)
        store = store_of(svc)
        # the token's subject; X-Actor only names the operator when auth is off
        actor = who.subject if svc.live.auth.enabled else request.headers.get("x-actor", "api")
        removed = await run_in_threadpool(store.delete_user, user_id, actor)
        if svc.live.cache is not None:
            await run_in_threadpool(svc.live.cache.invalidate_user, user_id)
        removed["model_history"] = len(svc.histories.get(user_id, []))  # suppressed from now on
        logger.info("user erased", request_id=request.state.request_id, actor=actor)
        return Erasure(user_id=user_id, removed=removed)

    @app.get("/books", response_model=BookList)
    async def search_books(
        request: Request,
        q: str = Query(..., min_length=1, max_length=200),
        limit: int = Query(20, ge=1, le=100),
    ) -> BookList:
        """Full-text search of titles and authors (every word, prefix match)."""
        store = store_of(service(request))
        found = await run_in_threadpool(store.search_books, q, limit)
        return BookList(books=[Book(**b) for b in found])

    @app.get("/books/{book_id}", response_model=Book)
    async def get_book(request: Request, book_id: str) -> Book:
        book = await run_in_threadpool(store_of(service(request)).book, book_id)
        if book is None:
            raise UnknownBook(f"unknown book id '{book_id}'")
        return Book(**book)

    @app.post("/books", status_code=201, response_model=Book)
    async def create_book(request: Request, body: BookCreate) -> Book:
        """Add a book to the catalogue (409 if the id exists)."""
        svc = service(request)
        svc.live.auth.require_scope(principal(request), CATALOGUE_WRITE)
        fields = body.model_dump(exclude={"book_id"})
        try:
            book = await run_in_threadpool(store_of(svc).put_book, body.book_id, fields, True)
        except KeyError:
            raise BookExists(
                f"book '{body.book_id}' already exists; use PUT to change it"
            ) from None
        if book["book_id"] in svc.catalogue.index:
            svc.catalogue.update(book)  # a model book deleted earlier and listed again
        else:
            await run_in_threadpool(svc.add_books, [book])  # retrievable now, no retraining
        return Book(**book)

    @app.put("/books/{book_id}", response_model=Book)
    async def update_book(request: Request, book_id: str, body: BookIn) -> Book:
        """Change a book's catalogue fields (404 if it does not exist)."""
        svc = service(request)
        svc.live.auth.require_scope(principal(request), CATALOGUE_WRITE)
        fields = body.model_dump(exclude_unset=True)
        try:
            book = await run_in_threadpool(store_of(svc).put_book, book_id, fields, False)
        except LookupError:
            raise UnknownBook(f"unknown book id '{book_id}'") from None
        svc.catalogue.update(book)
        return Book(**book)

    @app.delete("/books/{book_id}", status_code=204)
    async def delete_book(request: Request, book_id: str) -> Response:
        """Remove a book from the catalogue: it is no longer recommended or searchable."""
        svc = service(request)
        svc.live.auth.require_scope(principal(request), CATALOGUE_WRITE)
        if not await run_in_threadpool(store_of(svc).delete_book, book_id):
            raise UnknownBook(f"unknown book id '{book_id}'")
        svc.catalogue.remove(book_id)
        return Response(status_code=204)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(request: Request) -> JSONResponse:
        svc = getattr(request.app.state, "service", None)
        if svc is None:
            return JSONResponse(status_code=503, content={"status": "loading"})
        return JSONResponse({"status": "ready", "bundle_version": svc.version})

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def configure_logging() -> None:
    """Structured JSON logs (one line per event)."""
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.JSONRenderer(),
        ]
    )
