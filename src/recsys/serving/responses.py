"""The error answers each route declares in OpenAPI, so the document lists every status the
app gives and its shape (the schemathesis fuzz holds the app to it).

Every route is behind the token and rate-limit guard: 401 and 429 are declared app-wide
(:data:`GUARDED`); routes add theirs with :func:`answers`. The 422 shape covers both FastAPI's
list of field errors and the rules a schema cannot state (an event's book not in the catalogue,
an unknown experiment variant), which come as one message.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class ErrorDetail(BaseModel):
    """A refused request: what went wrong and how to fix it."""

    detail: str


class ValidationIssue(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ValidationFailed(BaseModel):
    """422: the fields at fault, or one message for a rule beyond the schema."""

    detail: list[ValidationIssue] | str


WHY = {
    400: "The body is not JSON the server can decode, or (models) the registry refused",
    401: "No valid bearer token (`WWW-Authenticate: Bearer`)",
    403: "The token may not act for this user, or lacks the scope",
    404: "Unknown, deleted or erased book or user",
    409: "Conflict: a book with this id exists, or (models) the server follows no registry",
    413: "Body over `max_body_bytes`",
    422: "Invalid input",
    429: "Over the rate limit (`Retry-After` says when to retry)",
    503: "The store is not configured or cannot be reached (`Retry-After` when it is down)",
}
BODY = (400, 413, 422)  # a route that reads a JSON body


def answers(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` of these error statuses."""
    return {
        code: {"model": ValidationFailed if code == 422 else ErrorDetail, "description": WHY[code]}
        for code in codes
    }


GUARDED = answers(401, 429)
