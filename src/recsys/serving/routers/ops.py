"""The operator console's live view of this process: traffic, latency, errors, fallbacks."""

from __future__ import annotations

from fastapi import APIRouter, Request

from recsys.serving.auth import OPS_READ
from recsys.serving.deps import core_of, require_scope
from recsys.serving.responses import answers
from recsys.serving.schemas import RulesOut, VitalsOut

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


@router.get("/ops/rules", response_model=RulesOut, responses=answers(403))
async def rules(request: Request) -> RulesOut:
    """The business rules in force (docs/serving.md, "Business rules"): the file watched,
    the rules as applied, and why the file's latest version was refused, if it was."""
    require_scope(request, OPS_READ)
    serving = core_of(request)
    holder, watcher = serving.live.rules, serving.rules_watcher
    return RulesOut(
        file=serving.live.rules_file,
        version=holder.version,
        rules=holder.rules.spec.model_dump(mode="json", exclude_defaults=True),
        error=watcher.error if watcher is not None else None,
    )
