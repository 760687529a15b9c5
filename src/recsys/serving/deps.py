"""FastAPI dependencies: the serving core, the caller (bearer token) and their rate limit,
and the resource services routes call.

Dependencies are ``async def``: FastAPI runs plain ``def`` dependencies in the thread pool,
a thread hop per request for no work.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Request

from recsys.serving import blocking
from recsys.serving.auth import Principal, Unauthorized
from recsys.serving.books import Books
from recsys.serving.core import ServingCore
from recsys.serving.ingest import Ingest
from recsys.serving.ratelimit import RateLimiter
from recsys.serving.schemas import PATH_ID_PATTERN
from recsys.serving.users import Users

# A user or book id in a path: up to 200 characters, no control characters (422 otherwise).
PathId = Annotated[str, Path(min_length=1, max_length=200, pattern=PATH_ID_PATTERN)]


def core_of(request: Request) -> ServingCore:
    """The process's serving core (set at start-up)."""
    found: ServingCore = request.app.state.core
    return found


async def core(request: Request) -> ServingCore:
    return core_of(request)


async def guard(request: Request) -> None:
    """Every API route: who is calling (bearer token), and their rate limit. A request with
    a bad token is counted against its address before it is refused, so floods of bad
    tokens are limited too."""
    live = core_of(request).live
    address = f"ip:{request.client.host if request.client else '-'}"
    route = getattr(request.scope.get("route"), "path", request.url.path)
    try:
        principal = live.auth.principal(request.headers.get("authorization"))
    except Unauthorized:
        if live.limiter is not None:
            await _count(live.limiter, address, route)  # 429 once the address is over its limit
        raise
    request.state.principal = principal
    if live.limiter is not None:
        by_token = principal is not None and live.auth.enabled
        identity = f"sub:{principal.subject}" if principal is not None and by_token else address
        await _count(live.limiter, identity, route)


async def _count(limiter: RateLimiter, identity: str, route: str) -> None:
    """One request against ``identity``'s limit: in this process's memory at once, in Redis
    from a worker thread (a network round trip never holds the event loop, which under Ray
    Serve is also the replica's own)."""
    if limiter.remote:
        await blocking.run(limiter.check, identity, route)
    else:
        limiter.check(identity, route)


def principal(request: Request) -> Principal | None:
    who: Principal | None = getattr(request.state, "principal", None)
    return who


def may_act(request: Request, user_id: str, scope: str) -> Principal:
    """The caller, if they may act for ``user_id`` with ``scope`` (401/403 otherwise)."""
    return core_of(request).live.auth.require_user(principal(request), user_id, scope)


def require_scope(request: Request, scope: str) -> Principal:
    """The caller, if their token has ``scope`` (401/403 otherwise)."""
    return core_of(request).live.auth.require_scope(principal(request), scope)


async def ingest(request: Request) -> Ingest:
    return Ingest(core_of(request))


async def users(request: Request) -> Users:
    return Users(core_of(request))


async def books(request: Request) -> Books:
    return Books(core_of(request))
