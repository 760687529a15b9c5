"""The FastAPI application, assembled: lifespan, middleware, error map, routers.

Runners: uvicorn (`recsys serve`, one process, the embedded default); Ray Serve wraps the same
app. Routes live in :mod:`recsys.serving.routers` (one module per resource); what they call
lives below HTTP, in :class:`recsys.serving.core.ServingCore` and the resource services.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import structlog
from fastapi import Depends, FastAPI

from recsys.serving import blocking, errors
from recsys.serving.core import ServingCore
from recsys.serving.deps import guard
from recsys.serving.metrics import Metrics
from recsys.serving.middleware import BodyLimit, RequestContext
from recsys.serving.responses import GUARDED
from recsys.serving.routers import (
    books,
    events,
    experiments,
    health,
    models,
    ops,
    recommendations,
    session,
    users,
)
from recsys.serving.service import RecommendationService
from recsys.serving.web import mount_web_app

ROUTERS = (
    recommendations.router,
    events.router,
    users.router,
    books.router,
    experiments.router,
    models.router,
    health.router,
    session.router,
    ops.router,
)


def create_app(
    load: Callable[[], RecommendationService | ServingCore],
    echo_request_id: bool = True,
    cancel_on_disconnect: bool = True,
) -> FastAPI:
    """Build the app; ``load`` returns the service, or a whole serving core (the Ray runner
    keeps its own, to swap bundles), called once at start-up.

    ``echo_request_id``: set ``X-Request-ID`` on responses. Ray Serve's proxy does that itself
    (and passes the id it honoured or generated to the app), so the Ray runner turns it off.
    ``cancel_on_disconnect``: cancel a request whose caller disconnected before its answer
    (uvicorn does not; Serve's proxy does, so the Ray runner turns it off too).
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loaded = await blocking.run(load)
        serving = (
            loaded if isinstance(loaded, ServingCore) else ServingCore(loaded, app.state.metrics)
        )
        app.state.metrics = serving.metrics
        await blocking.run(serving.start)
        app.state.core = serving
        yield
        await blocking.run(serving.close)  # joins threads, flushes to the store

    app = FastAPI(
        title="recsys",
        version="1",
        lifespan=lifespan,
        dependencies=[Depends(guard)],
        responses=GUARDED,
        description="Book recommendations: two-stage retrieval and ranking with "
        "popularity fallback.",
    )
    app.state.metrics = Metrics()  # replaced by the core's at start-up (the same, locally)

    def body_limit() -> int:
        serving = getattr(app.state, "core", None)
        return int(serving.live.max_body_bytes) if serving is not None else 1_000_000

    app.add_middleware(BodyLimit, limit=body_limit, cancel_on_disconnect=cancel_on_disconnect)
    app.add_middleware(RequestContext, echo_request_id=echo_request_id)  # outside BodyLimit
    errors.install(app)
    for router in ROUTERS:
        app.include_router(router)
    mount_web_app(app)
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
