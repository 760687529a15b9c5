"""A/B experiments: what is running, and how each variant does."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from recsys.serving import blocking
from recsys.serving.auth import EXPERIMENTS_READ
from recsys.serving.core import ServingCore
from recsys.serving.deps import PathId, core, require_scope
from recsys.serving.responses import answers
from recsys.serving.schemas import ExperimentSeries, ExperimentsOverview

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
    return await blocking.run(serving.experiments_overview, control)


@router.get(
    "/experiments/{name}/series",
    response_model=ExperimentSeries,
    responses=answers(403, 422, 503),
)
async def experiment_series(
    request: Request,
    name: PathId,
    serving: Annotated[ServingCore, Depends(core)],
    bucket_s: int = Query(3600, ge=60, le=7 * 86400, description="bucket width, seconds"),
) -> ExperimentSeries:
    """Click-through per variant over time: impressions, clicked impressions and the Wilson
    95% interval in each ``bucket_s`` bucket (ended experiments included)."""
    require_scope(request, EXPERIMENTS_READ)
    return await blocking.run(serving.experiment_series, name, bucket_s)
