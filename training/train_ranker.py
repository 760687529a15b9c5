"""Retrain only the ranker on an existing bundle's retriever; writes a new bundle version.

python training/train_ranker.py bundle=artifacts/bundles/amazon_book ranker.module.loss=pairwise
"""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from recsys.jobs.train_ranker import main as train_ranker
from recsys.runner import guarded

CONFIGS = str(Path(__file__).resolve().parents[1] / "configs")


@hydra.main(config_path=CONFIGS, config_name="train_ranker", version_base="1.3")
def main(cfg: DictConfig) -> None:
    guarded(train_ranker)(cfg)


if __name__ == "__main__":
    main()
