"""Reading events and experiment feedback."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from recsys.serving import blocking
from recsys.serving.deps import ingest, may_act
from recsys.serving.ingest import Ingest
from recsys.serving.responses import BODY, answers
from recsys.serving.schemas import EventBatch, EventIn, EventsAccepted, FeedbackIn

router = APIRouter(tags=["events"])
IngestDep = Annotated[Ingest, Depends(ingest)]


@router.post(
    "/events", status_code=202, response_model=EventsAccepted, responses=answers(*BODY, 403, 503)
)
async def post_events(
    request: Request, body: EventIn | EventBatch, events: IngestDep
) -> EventsAccepted:
    """Record reading events (one, or ``{"events": [...]}`` up to 1000), durably. The
    user's next recommendation uses them; ``event_id`` makes retries idempotent."""
    events.require_store()
    batch = body.events if isinstance(body, EventBatch) else [body]
    for user in sorted({e.user_id for e in batch}):
        may_act(request, user, "events:write:any")
    stored, duplicates = await blocking.run(events.record, batch)
    return EventsAccepted(stored=stored, duplicates=duplicates)


@router.post("/feedback", status_code=202, responses=answers(*BODY, 403, 503))
async def post_feedback(request: Request, body: FeedbackIn, events: IngestDep) -> dict[str, str]:
    """A reader's reaction to a served list (``request_id`` of that response):
    ``click`` counts toward the experiment's click-through rate."""
    may_act(request, body.user_id, "events:write:any")
    await blocking.run(events.feedback, body)
    return {"status": "recorded"}
