"""`recsys download dataset=...`: fetch a public dataset with checksum verification."""

from __future__ import annotations

from omegaconf import DictConfig

from recsys.data.download import download


def main(cfg: DictConfig) -> None:
    folder = download(str(cfg.dataset), cfg.dest, timeout=float(cfg.timeout_s))
    print(f"{cfg.dataset}: verified files in {folder}")
    print(f"use it with: recsys data prepare data={cfg.dataset} data.reader.path={folder}")
