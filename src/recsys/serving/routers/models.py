"""The model registry, as this server follows it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from recsys.serving.auth import MODELS_WRITE
from recsys.serving.core import ServingCore
from recsys.serving.deps import core, require_scope
from recsys.serving.follow import RegistryOff
from recsys.serving.schemas import ModelsReload
from recsys.stores import StoreUnavailable

router = APIRouter(tags=["models"])


@router.post("/models/reload", response_model=ModelsReload)
async def reload(request: Request, serving: Annotated[ServingCore, Depends(core)]) -> ModelsReload:
    """Read the registry's production version now and hot-swap to it if it moved (the server
    polls every ``registry.poll_s`` anyway). Answers this replica only; others follow within
    their next poll."""
    require_scope(request, MODELS_WRITE)
    follower = serving.follower
    if follower is None:
        raise RegistryOff("this server follows no model registry (registry.url is null)")
    switched = await run_in_threadpool(follower.check)
    if follower.error is not None:
        raise StoreUnavailable(f"model registry: {follower.error}", retry_after=2)
    return ModelsReload(
        family=follower.family,
        production=follower.applied,
        bundle_version=serving.service.version,
        switched=switched,
    )
