"""Screenshots of the web app for the docs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

# RECSYS_SCREENSHOTS=docs/screenshots pytest tests/browser: the pages' pictures for the docs
SHOTS = os.environ.get("RECSYS_SCREENSHOTS")


def shoot(page: Any, name: str, full_page: bool = True) -> None:
    """Save a screenshot of ``page`` as ``<name>.png`` when RECSYS_SCREENSHOTS names a folder."""
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS) / f"{name}.png"), full_page=full_page)
