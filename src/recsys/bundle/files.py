"""A bundle on disk without loading it: resolve a family's ``LATEST``, verify every file's
checksum, point ``LATEST`` at a version. Light (no torch), so the model registry and its
commands can check bundles without importing the model code."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from recsys.bundle import layout
from recsys.bundle.manifest import MANIFEST, MANIFEST_SCHEMA, Manifest
from recsys.checksums import sha256_file
from recsys.errors import BundleError


def resolve(path: str | Path) -> Path:
    """A version folder, or a family folder whose ``LATEST`` names one."""
    folder = Path(path)
    if (folder / MANIFEST).is_file():
        return folder
    latest = folder / layout.LATEST
    if latest.is_file():
        return folder / latest.read_text().strip()
    if not folder.exists():
        raise BundleError(
            f"bundle {folder} does not exist. Train one (`make demo` or "
            "`python training/train.py`) or fix the bundle path."
        )
    raise BundleError(f"{folder} is not a bundle (no {MANIFEST}) and has no LATEST file.")


def verify(folder: Path) -> Manifest:
    """Check the manifest schema and every file's checksum; raise BundleError on mismatch."""
    try:
        raw = json.loads((folder / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BundleError(f"{folder}: unreadable {MANIFEST} ({exc}).") from None
    if raw.get("manifest_schema") != MANIFEST_SCHEMA:
        raise BundleError(
            f"{folder}: manifest_schema {raw.get('manifest_schema')} is not the supported "
            f"{MANIFEST_SCHEMA}; rebuild the bundle with this version of recsys."
        )
    manifest = Manifest.from_dict(raw)
    present = {
        str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST
    }
    missing = sorted(set(manifest.files) - present)
    extra = sorted(present - set(manifest.files))
    if missing:
        raise BundleError(f"{folder}: missing file(s) {missing}; the bundle is incomplete.")
    if extra:
        raise BundleError(f"{folder}: unexpected file(s) {extra}; bundles are never edited.")
    for rel, meta in manifest.files.items():
        if sha256_file(folder / rel) != meta["sha256"]:
            raise BundleError(
                f"{folder}: checksum mismatch for {rel}; the bundle is corrupt "
                "or was modified. Rebuild or restore it."
            )
    return manifest


def promote_version(family: Path, version: str) -> None:
    """Atomically rewrite ``LATEST`` to name ``version``."""
    if not (family / version / MANIFEST).is_file():
        raise BundleError(f"cannot promote {version}: no such bundle in {family}.")
    fd, tmp = tempfile.mkstemp(prefix=".LATEST.", dir=family)
    with os.fdopen(fd, "w") as handle:
        handle.write(version + "\n")
    os.replace(tmp, family / layout.LATEST)
