"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

router = APIRouter(tags=["health"])
LOADING: dict[int | str, dict[str, Any]] = {
    503: {"description": 'The bundle is still loading: `{"status": "loading"}`'}
}


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", responses=LOADING)
async def readyz(request: Request) -> JSONResponse:
    serving = getattr(request.app.state, "core", None)
    if serving is None:
        return JSONResponse(status_code=503, content={"status": "loading"})
    return JSONResponse({"status": "ready", "bundle_version": serving.service.version})


@router.get("/metrics", response_class=PlainTextResponse)
async def prometheus(request: Request) -> Response:
    registry = request.app.state.metrics.exported  # every worker's, with several
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
