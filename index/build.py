"""Build (or rebuild) a bundle's FAISS index as a new bundle version.

python index/build.py bundle=artifacts/bundles/amazon_book index=ivf_flat
"""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from recsys.jobs.build_index import main as build
from recsys.runner import guarded

CONFIGS = str(Path(__file__).resolve().parents[1] / "configs")


@hydra.main(config_path=CONFIGS, config_name="build_index", version_base="1.3")
def main(cfg: DictConfig) -> None:
    guarded(build)(cfg)


if __name__ == "__main__":
    main()
