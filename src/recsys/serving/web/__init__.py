"""The web app: reader pages served by the API's own FastAPI app, on every runner.

Static files only (HTML, one ES module, CSS): no build step and nothing to install. The pages
call the same JSON API as any client, with the reader's bearer token, so they can do exactly
what the token allows and nothing else.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"
PREFIX = "/app"


def mount_web_app(app: FastAPI) -> None:
    """Serve the pages under ``/app/`` and send ``/`` there."""
    app.mount(PREFIX, StaticFiles(directory=STATIC, html=True), name="web")

    @app.get("/", include_in_schema=False)
    async def home() -> RedirectResponse:
        return RedirectResponse(f"{PREFIX}/")
