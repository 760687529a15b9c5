"""`python index/build.py bundle=...`: add (or replace) the FAISS index of a bundle, producing a
new bundle version; the source bundle is never edited."""

from __future__ import annotations

import shutil
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig

from recsys.bundle.manifest import MANIFEST, git_info, new_version, utc_now
from recsys.bundle.reader import Bundle, load_bundle
from recsys.bundle.writer import write_bundle
from recsys.features.vocab import NUM_RESERVED
from recsys.index.faiss_index import FaissIndex, IndexSpec, build_index
from recsys.report import print_table


def index_books(embeddings: np.ndarray, spec: IndexSpec, queries: np.ndarray) -> FaissIndex:
    """Index every real book (rows 0 and 1 of the embedding matrix are reserved)."""
    rows = np.arange(NUM_RESERVED, embeddings.shape[0])
    return build_index(embeddings[NUM_RESERVED:], rows, spec, queries)


def user_queries(bundle: Bundle, n: int = 2000, seed: int = 0) -> np.ndarray:
    """Vectors of a seeded sample of the bundle's known users: what the index will serve."""
    table = bundle.user_table
    known = np.flatnonzero((table["history"] > 0).any(1).numpy())
    pick = np.random.default_rng(seed).choice(known, min(n, known.size), replace=False)
    idx = torch.from_numpy(pick)
    with torch.no_grad():
        out = bundle.user_tower(
            table["user"][idx], table["history"][idx], table["age"][idx], table["country"][idx]
        )
    return np.asarray(out.numpy(), dtype=np.float32)


def rebuild(bundle: Bundle, spec: IndexSpec, promote: bool = True) -> Path:
    """Write a new version of ``bundle`` with an index built from ``spec``."""
    index = index_books(bundle.book_embeddings, spec, user_queries(bundle))
    sha, dirty = git_info()
    manifest = replace(
        bundle.manifest,
        bundle_version=new_version(),
        git_sha=sha,
        git_dirty=dirty,
        parent_version=bundle.version,
        index_spec=asdict(index.report),
        files={},
        created_at=utc_now(),
    )
    parts: dict[str, Any] = {}
    for child in sorted(bundle.path.iterdir()):
        if child.name in (MANIFEST, "index"):
            continue
        parts[child.name] = lambda d, src=child: shutil.copytree(src, d, dirs_exist_ok=True)
    parts["index"] = index.save
    return write_bundle(bundle.path.parent.parent, manifest, parts, promote=promote)


def main(cfg: DictConfig) -> Path:
    bundle = load_bundle(cfg.bundle)
    spec: IndexSpec = hydra.utils.instantiate(cfg.index)
    path = rebuild(bundle, spec, promote=bool(cfg.promote))
    report = load_bundle(path).index
    assert report is not None
    facts = {k: v for k, v in asdict(report.report).items() if k != "tuning"}
    print_table({spec.kind: facts}, title=f"index of {path}")
    print(f"new bundle version written to {path}")
    return path
