"""Cross-cutting HTTP concerns as named middleware: request context (request id, metrics,
the request log) and the request body limit."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

import structlog
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from recsys.serving.metrics import Metrics

logger = structlog.get_logger("recsys.serving")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")  # safe as a log field and a store key


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


def add_request_context(app: FastAPI, echo_request_id: bool) -> None:
    """Every request: an id (the caller's ``X-Request-ID`` or a new one), Prometheus counts
    and latency by endpoint and answer source, error counts, one structured log line.

    ``echo_request_id``: set ``X-Request-ID`` on responses (Ray Serve's proxy does that itself).
    """

    @app.middleware("http")
    async def request_context(request: Request, call_next: Any) -> Response:
        request_id = request.headers.get("x-request-id") or ""
        ours = not _REQUEST_ID.fullmatch(request_id)
        if ours:  # none, too long or odd: ours instead
            request_id = uuid.uuid4().hex
        request.state.request_id = request_id
        # a caller-chosen id may repeat or collide with another caller's: never a record key
        request.state.unique_id = request_id if ours else uuid.uuid4().hex
        request.state.source = "-"
        started = time.perf_counter()
        try:
            response: Response = await call_next(request)
        except Exception:  # counted and logged like any answer, with the request id
            logger.exception("unhandled error", request_id=request_id)
            response = JSONResponse(
                {"detail": "internal error", "request_id": request_id}, status_code=500
            )
        elapsed = time.perf_counter() - started
        route = request.scope.get("route")
        endpoint = getattr(route, "path", "unmatched")
        metrics: Metrics = request.app.state.metrics  # the serving core's, once started
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
