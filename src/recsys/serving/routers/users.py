"""What is known about a user, and erasure."""

from __future__ import annotations

from typing import Annotated

import structlog
from fastapi import APIRouter, Depends, Query, Request
from starlette.concurrency import run_in_threadpool

from recsys.serving.deps import PathId, core_of, may_act, users
from recsys.serving.responses import answers
from recsys.serving.schemas import Erasure, UserHistory, UserProfile
from recsys.serving.users import Users

router = APIRouter(tags=["users"])
logger = structlog.get_logger("recsys.serving")
UsersDep = Annotated[Users, Depends(users)]


@router.get("/users/{user_id}", response_model=UserProfile, responses=answers(403, 404, 422, 503))
async def get_user(request: Request, user_id: PathId, known: UsersDep) -> UserProfile:
    """What is known about a user (404 when nothing is, or after erasure)."""
    may_act(request, user_id, "users:read:any")
    return await run_in_threadpool(known.profile, user_id)


@router.get(
    "/users/{user_id}/history",
    response_model=UserHistory,
    responses=answers(403, 404, 422, 503),
)
async def get_history(
    request: Request, user_id: PathId, known: UsersDep, limit: int = Query(200, ge=1, le=1000)
) -> UserHistory:
    """The user's reading history, most recent last: the bundle's, then their events."""
    may_act(request, user_id, "users:read:any")
    return await run_in_threadpool(known.history, user_id, limit)


@router.delete("/users/{user_id}", response_model=Erasure, responses=answers(403, 422, 503))
async def delete_user(request: Request, user_id: PathId, known: UsersDep) -> Erasure:
    """GDPR erasure: the user's events and profile are deleted, cached answers purged,
    the id suppressed from later exports and batch outputs, and an audit entry written
    (actor from ``X-Actor``; the subject only as a salted hash)."""
    who = may_act(request, user_id, "users:delete:any")
    # the token's subject; X-Actor only names the operator when auth is off
    auth_on = core_of(request).live.auth.enabled
    actor = who.subject if auth_on else request.headers.get("x-actor", "api")
    removed = await run_in_threadpool(known.erase, user_id, actor)
    logger.info("user erased", request_id=request.state.request_id, actor=actor)
    return Erasure(user_id=user_id, removed=removed)
