"""Write a bundle atomically: build it in a temp directory, fsync, rename. Never edit one."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import torch

from recsys.bundle import layout
from recsys.bundle.files import promote_version
from recsys.bundle.manifest import MANIFEST, Manifest
from recsys.errors import BundleError

Writer = Callable[[Path], None]


def _fsync_tree(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())


def write_bundle(
    root: str | Path, manifest: Manifest, parts: dict[str, Writer], promote: bool = True
) -> Path:
    """Create ``root/<bundle_name>/<bundle_version>/``.

    Args:
        root: bundles folder (e.g. ``artifacts/bundles``).
        manifest: facts about the bundle; ``files`` is filled in here.
        parts: relative folder -> function that writes that part into the given folder.
        promote: point ``root/<bundle_name>/LATEST`` at the new version.
    """
    family = Path(root) / manifest.bundle_name
    target = family / manifest.bundle_version
    if target.exists():
        raise BundleError(f"bundle {target} already exists; bundles are immutable.")
    family.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{manifest.bundle_version}.", dir=family))
    try:
        for rel, write in parts.items():
            folder = tmp / rel
            folder.mkdir(parents=True, exist_ok=True)
            write(folder)
        manifest.checksum_files(tmp)
        (tmp / MANIFEST).write_text(manifest.to_json())
        _fsync_tree(tmp)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    if promote:
        promote_version(family, manifest.bundle_version)
    return target


def save_module(module: torch.nn.Module, folder: Path, name: str, args: dict[str, object]) -> None:
    """State dict + constructor args (+ TorchScript when the module scripts)."""
    torch.save(module.state_dict(), layout.module_state(folder, name))
    layout.module_args(folder, name).write_text(json.dumps(args, indent=2, sort_keys=True))
    try:
        scripted = torch.jit.script(module.eval())
        scripted.save(str(layout.module_script(folder, name)))
    except Exception as exc:  # pragma: no cover - depends on the module
        layout.module_noscript(folder, name).write_text(f"TorchScript failed: {exc}\n")


def save_array(array: np.ndarray, path: Path) -> None:
    np.save(path, np.ascontiguousarray(array), allow_pickle=False)


def save_frame(frame: pl.DataFrame, path: Path) -> None:
    frame.write_parquet(path)
