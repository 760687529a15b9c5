"""A/B experiments: what is running, and how each variant does."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from starlette.concurrency import run_in_threadpool

from recsys.serving.auth import EXPERIMENTS_READ
from recsys.serving.core import ServingCore
from recsys.serving.deps import core, require_scope
from recsys.serving.responses import answers
from recsys.serving.schemas import ExperimentsOverview

router = APIRouter(tags=["experiments"])


@router.get("/experiments", response_model=ExperimentsOverview, responses=answers(403, 422, 503))
async def experiments(
    request: Request,
    serving: Annotated[ServingCore, Depends(core)],
    control: str = Query("control", min_length=1, max_length=200),
) -> ExperimentsOverview:
    """The experiments file as applied (variants, traffic, settings) and, with a store, each
    variant's click-through with a Wilson 95% interval and its difference to ``control``."""
    require_scope(request, EXPERIMENTS_READ)
    return await run_in_threadpool(serving.experiments_overview, control)
