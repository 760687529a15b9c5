"""Client errors of the HTTP API: one exception type per answer, one status map.

Library code raises :class:`recsys.errors.RecsysError` subclasses; :func:`install` maps each to
its status (a subclass before ``RecsysError``'s 400), with the message as ``detail``.
"""

from __future__ import annotations

import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from recsys.errors import RecsysError
from recsys.lifecycle.schema import RegistryUnavailable
from recsys.serving.auth import Forbidden, Unauthorized
from recsys.serving.books import BookExists
from recsys.serving.core import BadVariant
from recsys.serving.follow import RegistryOff
from recsys.serving.ingest import UnknownEventBook
from recsys.serving.ratelimit import RateLimited
from recsys.serving.service import UnknownBook
from recsys.serving.users import SelfFollow, TooManyFollows, UnknownUser
from recsys.stores import StoreUnavailable

STATUS: dict[type[RecsysError], int] = {
    UnknownBook: 404,
    UnknownUser: 404,
    BadVariant: 422,
    UnknownEventBook: 422,
    SelfFollow: 422,
    TooManyFollows: 422,
    BookExists: 409,
    RegistryOff: 409,
    Unauthorized: 401,
    Forbidden: 403,
    RateLimited: 429,
    StoreUnavailable: 503,
    RegistryUnavailable: 503,
}


async def client_error(request: Request, exc: Exception) -> JSONResponse:
    """The status of the first matching type in :data:`STATUS`, else 400."""
    status = next((code for kind, code in STATUS.items() if isinstance(exc, kind)), 400)
    headers = {}
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(exc, RateLimited | StoreUnavailable) and exc.retry_after is not None:
        headers["Retry-After"] = str(exc.retry_after)
    return JSONResponse(status_code=status, content={"detail": str(exc)}, headers=headers)


async def invalid_request(request: Request, exc: Exception) -> JSONResponse:
    """422 with pydantic's errors, as FastAPI answers, but safe to send whatever the input
    held: non-finite numbers and lone surrogates are echoed as text, never a 500."""
    assert isinstance(exc, RequestValidationError)
    return JSONResponse(status_code=422, content={"detail": _printable(exc.errors())})


def _printable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {str(_printable(k)): _printable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_printable(v) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    return _printable(str(value))  # exceptions in ``ctx``, bytes, ...


def install(app: FastAPI) -> None:
    """Register :func:`client_error` for every client-error type, and the 422 handler."""
    for kind in (*STATUS, RecsysError):
        app.add_exception_handler(kind, client_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
