"""Cross-cutting HTTP concerns as named middleware: request context (request id, metrics,
the request log), the request body limit and cancelling work whose caller disconnected."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

import structlog

from recsys.serving.batching import CURRENT_CALLER, Caller
from recsys.serving.metrics import Metrics
from recsys.serving.web import PREFIX as WEB_PREFIX

logger = structlog.get_logger("recsys.serving")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")  # safe as a log field and a store key


CLIENT_CLOSED = 499  # nginx's status for "the client closed the connection first"


class BodyLimit:
    """Pure ASGI middleware: request bodies over ``limit()`` bytes get 413, whether announced
    by Content-Length or streamed.

    With ``cancel_on_disconnect``, once the body is read it also watches the connection: a
    caller that disconnects before its answer has its request cancelled (the micro-batcher then
    drops its row, so nobody's work is spent on it) and is recorded with status 499. The Ray
    runner leaves this off: Serve's proxy cancels a disconnected caller's request itself.
    """

    def __init__(
        self, app: Any, limit: Callable[[], int], cancel_on_disconnect: bool = False
    ) -> None:
        self.app, self.limit = app, limit
        self.cancel_on_disconnect = cancel_on_disconnect

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
        if not self.cancel_on_disconnect or messages[-1]["type"] != "http.request":

            async def replayed() -> Any:
                try:
                    return next(replay)
                except StopIteration:
                    return await receive()

            await self.app(scope, replayed, send)
            return
        await _cancelled_on_disconnect(self.app, scope, replay, receive, send)

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


async def _cancelled_on_disconnect(
    app: Any, scope: Any, replay: Any, receive: Any, send: Any
) -> None:
    """Run ``app`` on a request whose body was read (``replay``) while the only reader of
    ``receive`` waits for the client to disconnect; if it does before the response is
    complete, the request's model work is withdrawn (:class:`Caller`), the app is cancelled
    and a 499 is sent (the server drops it: it only reaches the request log and metrics)."""
    disconnected = asyncio.Event()
    started = complete = False

    async def replayed() -> Any:
        with contextlib.suppress(StopIteration):
            return next(replay)
        await disconnected.wait()
        return {"type": "http.disconnect"}

    async def sending(message: Any) -> None:
        nonlocal started, complete
        started = True
        if message["type"] == "http.response.pathsend" or (
            message["type"] == "http.response.body" and not message.get("more_body", False)
        ):
            complete = True
        await send(message)

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        disconnected.set()

    caller = Caller()
    entered = CURRENT_CALLER.set(caller)  # the handler's task and worker threads copy it
    try:
        handler = asyncio.ensure_future(app(scope, replayed, sending))
    finally:
        CURRENT_CALLER.reset(entered)
    watcher = asyncio.ensure_future(watch())
    try:
        await asyncio.wait({handler, watcher}, return_when=asyncio.FIRST_COMPLETED)
        left = watcher.done() and not watcher.cancelled() and watcher.exception() is None
        if handler.done() or started or complete or not left:
            await handler  # finished, answering, or the watch failed: never cancelled
            return
        caller.leave()  # before the cancel: a worker thread cannot be cancelled, its wait can
        handler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await handler
        await send({"type": "http.response.start", "status": CLIENT_CLOSED, "headers": []})
        await send({"type": "http.response.body", "body": b""})
    finally:
        watcher.cancel()
        if not handler.done():  # this request itself was cancelled: so is its model work
            caller.leave()
            handler.cancel()


class RequestContext:
    """Pure ASGI middleware, every request: an id (the caller's ``X-Request-ID`` or a new one),
    Prometheus counts and latency by endpoint and answer source, error counts, one structured
    log line; an unexpected error is a logged 500 that carries the request id.

    Pure ASGI rather than ``@app.middleware("http")`` (Starlette's BaseHTTPMiddleware), which
    runs the app in a task of its own and streams the response through a memory channel: a
    cost on every request (docs/results/serving.md, #20).

    ``echo_request_id``: set ``X-Request-ID`` on responses (Ray Serve's proxy does that itself).
    Handlers read ``request.state.request_id``/``unique_id`` and set ``request.state.source``.
    """

    def __init__(self, app: Any, echo_request_id: bool) -> None:
        self.app, self.echo_request_id = app, echo_request_id

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = ""
        for name, value in scope.get("headers") or ():
            if name == b"x-request-id":
                request_id = value.decode("latin-1")
                break
        ours = not _REQUEST_ID.fullmatch(request_id)
        if ours:  # none, too long or odd: ours instead
            request_id = uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        # a caller-chosen id may repeat or collide with another caller's: never a record key
        state["unique_id"] = request_id if ours else uuid.uuid4().hex
        state["source"] = "-"
        status = 0
        echoed = (b"x-request-id", request_id.encode("latin-1"))

        async def sending(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if self.echo_request_id:
                    headers = [h for h in message.get("headers", ()) if h[0] != b"x-request-id"]
                    message = {**message, "headers": [*headers, echoed]}
            await send(message)

        started = time.perf_counter()
        try:
            await self.app(scope, receive, sending)
        except Exception:  # counted and logged like any answer, with the request id
            logger.exception("unhandled error", request_id=request_id)
            if status:  # the answer had begun: the server closes the connection
                raise
            status = 500
            body = json.dumps({"detail": "internal error", "request_id": request_id}).encode()
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ]
            await sending({"type": "http.response.start", "status": 500, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        finally:
            if status:
                self._record(scope, state, status, time.perf_counter() - started, request_id)

    @staticmethod
    def _record(scope: Any, state: Any, status: int, elapsed: float, request_id: str) -> None:
        route = scope.get("route")
        endpoint = getattr(route, "path", None) or _mounted(scope.get("path", ""))
        metrics: Metrics = scope["app"].state.metrics  # the serving core's, once started
        source = str(state.get("source", "-"))
        metrics.requests.labels(endpoint, source, str(status)).inc()
        metrics.latency.labels(endpoint, source).observe(elapsed)
        if status >= 400:
            metrics.errors.labels(endpoint, str(status)).inc()
        logger.info(
            "request",
            request_id=request_id,
            method=scope.get("method"),
            endpoint=endpoint,
            status=status,
            source=source,
            latency_ms=round(elapsed * 1000, 2),
        )


def _mounted(path: str) -> str:
    """The metrics label of a path no route matched: the web app's files, or unmatched."""
    return WEB_PREFIX if path == WEB_PREFIX or path.startswith(f"{WEB_PREFIX}/") else "unmatched"
