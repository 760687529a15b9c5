"""The model registry, as this server follows it: versions, promotion, rollback, reload."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from recsys.serving import blocking
from recsys.serving.auth import MODELS_WRITE, OPS_READ
from recsys.serving.deps import core_of, require_scope
from recsys.serving.models import Models
from recsys.serving.responses import BODY, answers
from recsys.serving.schemas import ModelsOverview, ModelsReload, PromoteIn, RollbackIn

router = APIRouter(tags=["models"])


async def models(request: Request) -> Models:
    return Models(core_of(request))


ModelsDep = Annotated[Models, Depends(models)]


@router.get("/models", response_model=ModelsOverview, responses=answers(403, 409, 503))
async def list_models(request: Request, registry: ModelsDep) -> ModelsOverview:
    """The followed family's versions, newest first: stage, offline metrics, lineage."""
    require_scope(request, OPS_READ)
    return await blocking.run(registry.overview)


@router.post(
    "/models/promote", response_model=ModelsReload, responses=answers(*BODY, 403, 409, 503)
)
async def promote(request: Request, body: PromoteIn, registry: ModelsDep) -> ModelsReload:
    """Make a version production (400 with the reason when the registry refuses it); this
    server switches at once, the others within their poll."""
    who = require_scope(request, MODELS_WRITE)
    return await blocking.run(registry.promote, body.version, who.subject, body.reason)


@router.post(
    "/models/rollback", response_model=ModelsReload, responses=answers(*BODY, 403, 409, 503)
)
async def rollback(request: Request, body: RollbackIn, registry: ModelsDep) -> ModelsReload:
    """Back to the previous production version (400 when there is none)."""
    who = require_scope(request, MODELS_WRITE)
    return await blocking.run(registry.rollback, who.subject, body.reason)


@router.post("/models/reload", response_model=ModelsReload, responses=answers(403, 409, 503))
async def reload(request: Request, registry: ModelsDep) -> ModelsReload:
    """Read the registry's production version now and hot-swap to it if it moved (the server
    polls every ``registry.poll_s`` anyway). Answers this replica only; others follow within
    their next poll."""
    require_scope(request, MODELS_WRITE)
    return await blocking.run(registry.reload)
