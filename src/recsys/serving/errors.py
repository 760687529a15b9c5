"""Client errors of the HTTP API: one exception type per answer, one status map.

Library code raises :class:`recsys.errors.RecsysError` subclasses; :func:`install` maps each to
its status (a subclass before ``RecsysError``'s 400), with the message as ``detail``.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from recsys.errors import RecsysError
from recsys.serving.auth import Forbidden, Unauthorized
from recsys.serving.books import BookExists
from recsys.serving.core import BadVariant
from recsys.serving.ingest import UnknownEventBook
from recsys.serving.ratelimit import RateLimited
from recsys.serving.service import UnknownBook
from recsys.serving.users import UnknownUser
from recsys.stores import StoreUnavailable

STATUS: dict[type[RecsysError], int] = {
    UnknownBook: 404,
    UnknownUser: 404,
    BadVariant: 422,
    UnknownEventBook: 422,
    BookExists: 409,
    Unauthorized: 401,
    Forbidden: 403,
    RateLimited: 429,
    StoreUnavailable: 503,
}


async def client_error(request: Request, exc: Exception) -> JSONResponse:
    """The status of the first matching type in :data:`STATUS`, else 400."""
    status = next((code for kind, code in STATUS.items() if isinstance(exc, kind)), 400)
    headers = {}
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(exc, RateLimited):
        headers["Retry-After"] = str(exc.retry_after)
    return JSONResponse(status_code=status, content={"detail": str(exc)}, headers=headers)


def install(app: FastAPI) -> None:
    """Register :func:`client_error` for every client-error type."""
    for kind in (*STATUS, RecsysError):
        app.add_exception_handler(kind, client_error)
