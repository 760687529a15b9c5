"""`recsys export-embeddings`: book and user vectors of a bundle for other teams."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from recsys.report import print_table


def main(cfg: DictConfig) -> dict[str, Any]:
    from recsys.bundle.reader import load_bundle
    from recsys.offline.export import export_embeddings, validate_export

    bundle = load_bundle(cfg.bundle)
    manifest = export_embeddings(
        bundle, str(cfg.out), npy=bool(cfg.npy), faiss_index=bool(cfg.faiss)
    )
    validate_export(cfg.out)  # what a consuming team would run
    print_table(
        {
            "export": {
                "bundle_version": manifest["bundle_version"],
                "dim": manifest["dim"],
                "books": manifest["rows"]["books"],
                "users": manifest["rows"]["users"],
                "files": len(manifest["files"]) + 1,
            }
        }
    )
    print(f"written {cfg.out}/ (validated: checksums, shapes, finite values)")
    return manifest
