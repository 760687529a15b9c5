"""The web app: reader pages served by the API's own FastAPI app, on every runner.

Static files only (HTML, three ES modules, CSS): no build step and nothing to install. The pages
call the same JSON API as any client, with the reader's bearer token, so they can do exactly
what the token allows and nothing else.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response
from starlette.types import Scope

STATIC = Path(__file__).parent / "static"
PREFIX = "/app"
# The pages run only their own scripts and styles and talk only to this server; covers may
# come from any web address. A bearer token lives in the tab's sessionStorage, so no
# injected script, framing or referrer leak is allowed.
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' https: http: data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class WebFiles(StaticFiles):
    """The pages' files, with :data:`HEADERS`."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(HEADERS)
        return response


def mount_web_app(app: FastAPI) -> None:
    """Serve the pages under ``/app/`` and send ``/`` there."""
    app.mount(PREFIX, WebFiles(directory=STATIC, html=True), name="web")

    @app.get("/", include_in_schema=False)
    async def home() -> RedirectResponse:
        return RedirectResponse(f"{PREFIX}/")
