"""Other versions of a trained bundle, for swap and experiment tests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path


def copy_version(source: Path, version: str, corrupt: bool = False) -> Path:
    """A copy of the bundle at ``source`` as version ``version`` next to it (made once); with
    ``corrupt``, one file no longer matches its checksum."""
    target = source.parent / version
    if not target.exists():
        shutil.copytree(source, target)
        manifest = json.loads((target / "manifest.json").read_text())
        manifest["bundle_version"] = version
        (target / "manifest.json").write_text(json.dumps(manifest))
        if corrupt:
            ranker = next((target / "ranker").glob("*.pt"))
            ranker.write_bytes(ranker.read_bytes()[:-16] + b"\0" * 16)
    return target
