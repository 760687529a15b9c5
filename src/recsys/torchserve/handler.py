"""The TorchServe handler of a recsys archive: the bundle packed in the archive, served by the
same :class:`RecommendationService` as ``recsys serve`` (no store: the bundle's histories and
catalogue; no exploration, whose slots need a store to log their propensities).

Request (JSON): ``{"user_id": "u1", "limit": 10, "filters": {...}}`` for a reader's list (as
``POST /recommendations/users/{user_id}``), or ``{"history": ["b1", …], …}`` for a list from
books alone (as ``POST /recommendations/hybrid``). Response: the recsys response body
(``recommendations`` with ``book_id``, ``title``, ``author``, ``confidence_score``,
``reasoning``; ``metadata``). A bad request is answered 400 or 422 with ``{"detail": …}``.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from http import HTTPStatus
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, model_validator

from recsys.errors import RecsysError
from recsys.serving.schemas import MAX_LIMIT, PATH_ID_PATTERN, Filters, RequestModel

BUNDLE_DIR = "bundle"  # the bundle's files, inside the archive


class ServeRequest(RequestModel):
    """One prediction request: a reader (``user_id``) or a reading history, not both."""

    user_id: str | None = Field(None, min_length=1, max_length=200, pattern=PATH_ID_PATTERN)
    history: list[str] | None = Field(None, min_length=1, max_length=1000)
    limit: int = Field(10, ge=1, le=MAX_LIMIT)
    filters: Filters | None = None

    @model_validator(mode="after")
    def one_subject(self) -> ServeRequest:
        if (self.user_id is None) == (self.history is None):
            raise ValueError("give either user_id or history (one of them)")
        return self


class Recommender:
    """The bundle's service and the response shape of ``recsys serve``."""

    def __init__(self, model_dir: str | Path, stage_timeout_s: float = 10.0) -> None:
        from recsys.bundle.reader import load_bundle
        from recsys.serving.service import RecommendationService

        self.bundle = load_bundle(Path(model_dir) / BUNDLE_DIR)  # checksums verified again
        self.service = RecommendationService(self.bundle, stage_timeout_s)

    def answer(self, body: Any) -> tuple[int, dict[str, Any]]:
        """(HTTP status, response body) for one request body (bytes, text or parsed)."""
        from recsys.serving.core import shape_answer

        try:
            if isinstance(body, bytes | bytearray):
                body = body.decode("utf-8")
            if isinstance(body, str):
                body = json.loads(body)
            req = ServeRequest.model_validate(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return 400, {"detail": f"the request body is not JSON: {exc}"}
        except ValidationError as exc:
            errors = [f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()]
            return 422, {"detail": errors}
        started = time.perf_counter()
        try:
            if req.user_id is not None:
                answer = self.service.for_user(req.user_id, req.limit, [], req.filters)
            else:
                answer = self.service.hybrid(None, req.history or [], [], req.limit, req.filters)
        except RecsysError as exc:  # refused by the service: the API's status for it
            from recsys.serving.errors import STATUS

            return next((c for k, c in STATUS.items() if isinstance(exc, k)), 400), {
                "detail": str(exc)
            }
        response = shape_answer(self.service, answer, started, uuid.uuid4().hex)
        return 200, response.model_dump(mode="json")


_lock = threading.Lock()
_recommender: Recommender | None = None


def handle(data: list[dict[str, Any]] | None, context: Any) -> list[Any] | None:
    """TorchServe's entry point: ``data`` None initialises (loads the bundle once); else one
    answer per request of the batch, each with its status."""
    global _recommender
    with _lock:
        if _recommender is None:
            _recommender = Recommender(context.system_properties.get("model_dir"))
    if data is None:
        return None
    out = []
    for index, request in enumerate(data):
        body = request.get("body") if request.get("body") is not None else request.get("data")
        status, answer = _recommender.answer(body)
        if status != 200:
            context.set_response_status(code=status, phrase=HTTPStatus(status).phrase, idx=index)
        out.append(answer)
    return out
