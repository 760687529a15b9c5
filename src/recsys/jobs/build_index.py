"""`python index/build.py bundle=...` / `recsys build-index`: add (or replace) the FAISS index
of a bundle, producing a new bundle version; the source bundle is never edited."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import hydra
from omegaconf import DictConfig

from recsys.bundle.reader import load_bundle
from recsys.index.faiss_index import IndexSpec
from recsys.report import print_table
from recsys.training.index import rebuild_index


def main(cfg: DictConfig) -> Path:
    bundle = load_bundle(cfg.bundle)
    spec: IndexSpec = hydra.utils.instantiate(cfg.index)
    path = rebuild_index(bundle, spec, promote=bool(cfg.promote))
    report = load_bundle(path).index
    assert report is not None
    facts = {k: v for k, v in asdict(report.report).items() if k != "tuning"}
    print_table({spec.kind: facts}, title=f"index of {path}")
    print(f"new bundle version written to {path}")
    return path
