"""The FastAPI application: routes, schemas, request ids, metrics, error mapping.

Runners: uvicorn (`recsys serve`, one process, the embedded default); Ray Serve wraps the same
app. Route logic lives in :class:`RecommendationService`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import structlog
from fastapi import FastAPI, Query, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from starlette.concurrency import run_in_threadpool

from recsys.errors import RecsysError
from recsys.serving.schemas import (
    MAX_LIMIT,
    HybridRequest,
    Metadata,
    Recommendation,
    RecommendationResponse,
    RecommendRequest,
    SimilarBooksV2Request,
    SimilarRequest,
)
from recsys.serving.service import Answer, RecommendationService, UnknownBook

logger = structlog.get_logger("recsys.serving")


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


def create_app(load: Callable[[], RecommendationService], echo_request_id: bool = True) -> FastAPI:
    """Build the app; ``load`` returns the service (called once at start-up).

    ``echo_request_id``: set ``X-Request-ID`` on responses. Ray Serve's proxy does that itself
    (and passes the id it honoured or generated to the app), so the Ray runner turns it off.
    """
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.service = await run_in_threadpool(load)
        yield
        app.state.service.close()

    app = FastAPI(
        title="recsys",
        version="1",
        lifespan=lifespan,
        description="Book recommendations: two-stage retrieval and ranking with "
        "popularity fallback.",
    )
    app.state.metrics = metrics

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

    @app.exception_handler(UnknownBook)
    async def unknown_book(request: Request, exc: UnknownBook) -> JSONResponse:
        return JSONResponse(status_code=404, content={"detail": str(exc)})

    @app.exception_handler(RecsysError)
    async def bad_request(request: Request, exc: RecsysError) -> JSONResponse:
        return JSONResponse(status_code=400, content={"detail": str(exc)})

    def service(request: Request) -> RecommendationService:
        svc: RecommendationService = request.app.state.service
        return svc

    async def respond(
        request: Request, endpoint: str, call: Callable[[RecommendationService], Answer]
    ) -> RecommendationResponse:
        # One service object per request: a hot swap in between never mixes two bundles.
        svc = service(request)
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
    ) -> RecommendationResponse:
        """Personalised recommendations from the user's stored history (popularity if unknown)."""
        req = body or RecommendRequest.model_validate({})
        return await respond(
            request,
            "user",
            lambda svc: svc.for_user(user_id, req.limit, req.exclude, req.filters),
        )

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
