"""`recsys export-torchserve`: a bundle as a TorchServe model archive (docs/torchserve.md)."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from recsys.report import print_table


def main(cfg: DictConfig) -> dict[str, Any]:
    from recsys.torchserve.archive import export

    written = export(str(cfg.bundle), str(cfg.out))
    print_table(
        {
            "archive": {
                "bundle_version": written["bundle_version"],
                "file": written["archive"],
                "MiB": round(written["bytes"] / 2**20, 1),
            }
        }
    )
    out = cfg.out
    print(f"written {out}/recsys.mar and {out}/config.properties (loopback); start it with")
    print(f"  torchserve --start --ncs --model-store {out} --ts-config {out}/config.properties")
    return written
