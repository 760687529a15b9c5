"""Recommendation endpoints: for a user, similar books, hybrid, trending."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from recsys.serving.core import Call, ServingCore
from recsys.serving.deps import PathId, core, may_act
from recsys.serving.responses import BODY, answers
from recsys.serving.schemas import (
    MAX_LIMIT,
    HybridRequest,
    RecommendationResponse,
    RecommendRequest,
    SimilarBooksV2Request,
    SimilarRequest,
)

router = APIRouter(tags=["recommendations"])
Core = Annotated[ServingCore, Depends(core)]


async def _respond(
    request: Request, serving: ServingCore, endpoint: str, call: Call
) -> RecommendationResponse:
    response = await serving.respond(endpoint, call, request.state.request_id)
    request.state.source = response.metadata.source
    return response


@router.post(
    "/recommendations/users/{user_id}",
    response_model=RecommendationResponse,
    responses=answers(*BODY, 403),
)
async def user_recommendations(
    request: Request, user_id: PathId, serving: Core, body: RecommendRequest | None = None
) -> JSONResponse:
    """Personalised recommendations from everything known about the user (their history in
    the bundle and their events since); popularity if unknown. Cached per user and
    parameters until the user's next event, a bundle swap or the TTL."""
    may_act(request, user_id, "recs:read:any")
    answer = await serving.recommend_user(
        user_id,
        body or RecommendRequest.model_validate({}),
        request.headers.get("x-experiment-variant"),
        request.state.request_id,
        request.state.unique_id,
    )
    request.state.source = answer["metadata"]["source"]
    return JSONResponse(answer)


@router.post(
    "/recommendations/books/{book_id}",
    response_model=RecommendationResponse,
    responses=answers(*BODY, 404),
)
async def similar_books(
    request: Request, book_id: PathId, serving: Core, body: SimilarRequest | None = None
) -> RecommendationResponse:
    """Books similar to one book (404 if the book is unknown)."""
    req = body or SimilarRequest.model_validate({})
    return await _respond(
        request, serving, "similar", lambda svc: svc.similar(book_id, req.limit, req.filters)
    )


@router.post(
    "/v2/recommendations/similar-books",
    response_model=RecommendationResponse,
    responses=answers(*BODY, 403, 404),
)
async def similar_books_v2(
    request: Request, body: SimilarBooksV2Request, serving: Core
) -> RecommendationResponse:
    """Similar books, re-ranked for the user in ``user_context`` when given."""
    ctx = body.user_context
    if ctx is not None and ctx.user_id:
        may_act(request, ctx.user_id, "recs:read:any")
    user_id = ctx.user_id if ctx else None
    preferences = ctx.preferences if ctx else None
    return await _respond(
        request,
        serving,
        "similar_v2",
        lambda svc: svc.similar(body.book_id, body.limit, None, user_id, preferences),
    )


@router.post(
    "/recommendations/hybrid",
    response_model=RecommendationResponse,
    responses=answers(*BODY, 403, 404),
)
async def hybrid(request: Request, body: HybridRequest, serving: Core) -> RecommendationResponse:
    """A known user and/or an anonymous history and/or seed books, blended into one list."""
    if body.user_id:
        may_act(request, body.user_id, "recs:read:any")
    return await _respond(
        request,
        serving,
        "hybrid",
        lambda svc: svc.hybrid(
            body.user_id, body.history, body.seed_books, body.limit, body.filters
        ),
    )


@router.get(
    "/recommendations/trending", response_model=RecommendationResponse, responses=answers(422)
)
async def trending(
    request: Request, serving: Core, limit: int = Query(10, ge=1, le=MAX_LIMIT)
) -> RecommendationResponse:
    """Popular books."""
    return await _respond(request, serving, "trending", lambda svc: svc.trending(limit))
