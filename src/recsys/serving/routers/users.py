"""What is known about a user, erasure, and the console's preview of their list."""

from __future__ import annotations

from typing import Annotated

import structlog
from fastapi import APIRouter, Depends, Query, Request

from recsys.serving import blocking
from recsys.serving.core import ServingCore
from recsys.serving.deps import PathId, core, core_of, may_act, require_scope, users
from recsys.serving.preview import preview
from recsys.serving.responses import BODY, answers
from recsys.serving.schemas import (
    PATH_ID_PATTERN,
    Erasure,
    Followed,
    FollowIn,
    Follows,
    Preferences,
    PreferencesWithdrawn,
    Preview,
    PreviewIn,
    Unfollowed,
    UserHistory,
    UserProfile,
)
from recsys.serving.users import Users

router = APIRouter(tags=["users"])
logger = structlog.get_logger("recsys.serving")
UsersDep = Annotated[Users, Depends(users)]
Core = Annotated[ServingCore, Depends(core)]


@router.get("/users/{user_id}", response_model=UserProfile, responses=answers(403, 404, 422, 503))
async def get_user(request: Request, user_id: PathId, known: UsersDep) -> UserProfile:
    """What is known about a user (404 when nothing is, or after erasure)."""
    may_act(request, user_id, "users:read:any")
    return await blocking.run(known.profile, user_id)


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
    return await blocking.run(known.history, user_id, limit)


@router.get(
    "/users/{user_id}/preferences",
    response_model=Preferences,
    responses=answers(403, 404, 422, 503),
)
async def get_preferences(request: Request, user_id: PathId, known: UsersDep) -> Preferences:
    """The reader's marks (events of those types) until withdrawn: ``not_interested`` or
    ``dislike`` (the book left out of their lists), ``less_of_author`` (its author's books
    down-weighted)."""
    may_act(request, user_id, "users:read:any")
    return await blocking.run(known.preferences, user_id)


@router.delete(
    "/users/{user_id}/preferences",
    response_model=PreferencesWithdrawn,
    responses=answers(403, 422, 503),
)
async def withdraw_preferences(
    request: Request,
    user_id: PathId,
    known: UsersDep,
    book_id: str | None = Query(
        None, min_length=1, max_length=200, pattern=PATH_ID_PATTERN, description="one book"
    ),
) -> PreferencesWithdrawn:
    """Withdraw the reader's marks on one book (``book_id``) or on all: those books may be
    recommended again at once."""
    may_act(request, user_id, "events:write:any")
    return await blocking.run(known.withdraw, user_id, book_id)


@router.get(
    "/users/{user_id}/follows",
    response_model=Follows,
    responses=answers(403, 404, 422, 503),
)
async def get_follows(request: Request, user_id: PathId, known: UsersDep) -> Follows:
    """Everyone the reader follows, oldest first."""
    may_act(request, user_id, "users:read:any")
    return await blocking.run(known.follows, user_id)


@router.post(
    "/users/{user_id}/follows",
    response_model=Followed,
    responses=answers(*BODY, 403, 404, 503),
)
async def follow(request: Request, user_id: PathId, body: FollowIn, known: UsersDep) -> Followed:
    """Follow another reader: books they read join this reader's candidates ("friends are
    reading", with that reason) from the next answer on. Idempotent (``created`` false the
    second time); 404 when nothing is known of the followee or either side was erased."""
    may_act(request, user_id, "events:write:any")
    return await blocking.run(known.follow, user_id, body.followee_id)


@router.delete(
    "/users/{user_id}/follows/{followee_id}",
    response_model=Unfollowed,
    responses=answers(403, 422, 503),
)
async def unfollow(
    request: Request, user_id: PathId, followee_id: PathId, known: UsersDep
) -> Unfollowed:
    """Stop following a reader: their books leave this reader's candidates at once."""
    may_act(request, user_id, "events:write:any")
    return await blocking.run(known.unfollow, user_id, followee_id)


@router.delete("/users/{user_id}", response_model=Erasure, responses=answers(403, 422, 503))
async def delete_user(request: Request, user_id: PathId, known: UsersDep) -> Erasure:
    """GDPR erasure: the user's events and profile are deleted, cached answers purged,
    the id suppressed from later exports and batch outputs, and an audit entry written
    (actor from ``X-Actor``; the subject only as a salted hash)."""
    who = may_act(request, user_id, "users:delete:any")
    # the token's subject; X-Actor only names the operator when auth is off
    auth_on = core_of(request).live.auth.enabled
    actor = who.subject if auth_on else request.headers.get("x-actor", "api")
    removed = await blocking.run(known.erase, user_id, actor)
    logger.info("user erased", request_id=request.state.request_id, actor=actor)
    return Erasure(user_id=user_id, removed=removed)


@router.post(
    "/users/{user_id}/preview",
    response_model=Preview,
    responses=answers(*BODY, 403, 503),
)
async def preview_user(
    request: Request, user_id: PathId, serving: Core, body: PreviewIn | None = None
) -> Preview:
    """What the reader would be served now and why (the operator console): the list, every
    candidate with its sources, features, ranker score and reason, and with ``book_id`` why
    that book is or is not in the list. Needs ``users:read:any``."""
    require_scope(request, "users:read:any")
    req = body or PreviewIn.model_validate({})
    arm = serving.experiments.assign(user_id)  # the reader's experiment arm, as served
    view = await blocking.run(preview, arm.service, user_id, req, arm.retrieval_only)
    return view.model_copy(update={"experiment": arm.experiment, "variant": arm.variant})
