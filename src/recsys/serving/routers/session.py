"""Who the caller is: what a client (the web app) asks after signing in with a token."""

from __future__ import annotations

from fastapi import APIRouter, Request

from recsys.serving.deps import core_of, principal
from recsys.serving.schemas import Session

router = APIRouter(tags=["session"])


@router.get("/auth/me", response_model=Session)
async def me(request: Request) -> Session:
    """The token's subject and scopes (401 without a valid token). With auth off, the answer
    says so and names no subject: clients then ask the reader who they are."""
    auth = core_of(request).live.auth
    if not auth.enabled:
        return Session(auth_enabled=False, subject=None, scopes=[])
    who = auth.require(principal(request))
    return Session(auth_enabled=True, subject=who.subject, scopes=sorted(who.scopes))
