"""Other versions of a trained bundle, for swap and experiment tests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any


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


def reversed_ranker(source: Path) -> Path:
    """A genuinely different model: a new version of the bundle at ``source`` (written once,
    through :func:`recsys.bundle.derive.derive`, not promoted) whose ranker scores are negated,
    so it ranks the same candidates in the opposite order. A response that mixes the two
    versions' stages, or carries one version's name with the other's list, is then visible."""
    from recsys.bundle import layout
    from recsys.bundle.derive import derive
    from recsys.bundle.reader import load_bundle
    from recsys.bundle.writer import save_module

    marker = source.parent / f".{source.name}.reversed"
    if marker.exists():
        return source.parent / marker.read_text().strip()
    bundle = load_bundle(source)
    folder = bundle.path / layout.RANKER
    ranker = bundle.ranker
    last = ranker.mlp[-1]
    last.weight.data.neg_()
    last.bias.data.neg_()
    args = json.loads(layout.module_args(folder, layout.RANKER_MODULE).read_text())

    def write(target: Path) -> None:
        shutil.copy2(folder / layout.GENERATOR, target / layout.GENERATOR)
        save_module(ranker, target, layout.RANKER_MODULE, args)

    new = derive(bundle, {layout.RANKER: write}, promote=False)
    marker.write_text(new.name)
    return new


def two_versions(trained: Path, root: Path) -> dict[str, Any]:
    """The trained bundle and a genuinely different version of it (:func:`reversed_ranker`),
    copied into a family folder under ``root`` (its ``LATEST`` is the caller's to move):
    ``folder``, ``name`` (the family), ``old`` and ``new`` (version folders)."""
    from recsys.bundle.reader import load_bundle

    source = load_bundle(trained).path
    other = reversed_ranker(source)
    folder = root / "bundles" / source.parent.name
    old, new = (Path(shutil.copytree(p, folder / p.name)) for p in (source, other))
    return {"folder": folder, "name": load_bundle(old).manifest.bundle_name, "old": old, "new": new}


def wide_histories(source: Path, users: int = 100_000, per_user: int = 10) -> Path:
    """A new version of the bundle at ``source`` (written once, not promoted) whose known
    histories add ``users`` made-up users of ``per_user`` random catalogue books each: what
    serving loads per user at the scale of a real catalogue (Amazon-Book: 70k users, 650k
    reads), on the small synthetic model. The model parts are the source's."""
    import numpy as np
    import polars as pl

    from recsys.bundle import layout
    from recsys.bundle.derive import derive
    from recsys.bundle.reader import load_bundle

    marker = source.parent / f".{source.name}.wide"
    if marker.exists():
        return source.parent / marker.read_text().strip()
    bundle = load_bundle(source)
    books = bundle.state.books.ids
    picks = np.random.default_rng(0).integers(0, books.len(), users * per_user)
    reads = pl.DataFrame(
        {
            "user_id": np.repeat([f"wide-{i}" for i in range(users)], per_user),
            "history": books.gather(picks),
        }
    )
    extra = reads.group_by("user_id", maintain_order=True).agg("history")
    known = pl.concat([bundle.known_histories, extra.cast(bundle.known_histories.schema)])

    def write(target: Path) -> None:
        shutil.copy2(bundle.path / layout.DATA / layout.HISTORIES, target / layout.HISTORIES)
        known.write_parquet(target / layout.KNOWN_HISTORIES)

    new = derive(bundle, {layout.DATA: write}, promote=False)
    marker.write_text(new.name)
    return new
