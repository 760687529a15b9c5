"""The operator console's live view of this process: traffic, latency, errors, fallbacks."""

from __future__ import annotations

from fastapi import APIRouter, Request

from recsys.serving.auth import OPS_READ
from recsys.serving.deps import core_of, require_scope
from recsys.serving.responses import answers
from recsys.serving.schemas import VitalsOut

router = APIRouter(tags=["operations"])


@router.get("/ops/vitals", response_model=VitalsOut, responses=answers(403))
async def vitals(request: Request) -> VitalsOut:
    """This process's last ten minutes in 5-second intervals: requests per second, p50 and
    p99 latency, 5xx share, fallback share of user lists, cache hit ratio, events per second
    (from the same counters as ``/metrics``)."""
    require_scope(request, OPS_READ)
    serving = core_of(request)
    return VitalsOut(
        bundle_version=serving.service.version,
        every_s=serving.vitals.every_s,
        points=serving.vitals.series(),
    )
