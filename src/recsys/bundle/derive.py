"""A new bundle version from an old one with some parts replaced; the old one is never edited."""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from recsys.bundle.manifest import git_info, new_version, utc_now
from recsys.bundle.reader import Bundle
from recsys.bundle.writer import Writer, write_bundle


def derive(
    bundle: Bundle,
    parts: dict[str, Writer],
    drop: Iterable[str] = (),
    promote: bool = True,
    **manifest_changes: Any,
) -> Path:
    """Write a new version of ``bundle`` next to it: every part is copied unchanged except
    those in ``parts`` (written by their writers instead) and those in ``drop`` (left out
    unless ``parts`` writes them again).

    Args:
        bundle: the (verified) source version.
        parts: part name (see :mod:`recsys.bundle.layout`) -> writer of the new part.
        drop: parts of the source not to carry over (a retrained stage's optional parts).
        promote: point the family's ``LATEST`` at the new version.
        **manifest_changes: manifest fields that differ from the source's (``metrics``,
            ``index_spec``); version, time, git facts and ``parent_version`` are set here,
            and ``config_hash`` is cleared unless given (a derived part came from another
            config than the source's).

    Returns:
        The new version's folder.
    """
    sha, dirty = git_info()
    manifest = replace(
        bundle.manifest,
        bundle_version=new_version(),
        created_at=utc_now(),
        git_sha=sha,
        git_dirty=dirty,
        parent_version=bundle.version,
        files={},
        **{"config_hash": None, **manifest_changes},
    )
    skip = set(parts) | set(drop)
    copied: dict[str, Writer] = {
        child.name: _copier(child)
        for child in sorted(bundle.path.iterdir())
        if child.is_dir() and child.name not in skip
    }
    return write_bundle(bundle.path.parent.parent, manifest, {**copied, **parts}, promote=promote)


def _copier(source: Path) -> Writer:
    def copy(folder: Path) -> None:
        shutil.copytree(source, folder, dirs_exist_ok=True)

    return copy
