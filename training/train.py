"""Train two-tower retrieval and write a model bundle.

python training/train.py                          # synthetic, offline
python training/train.py experiment=amazon_book   # the real benchmark data
python training/train.py -m model.task.temperature=0.05,0.1

Returns the metric named by ``optimized_metric`` (configs/train.yaml), so Hydra sweepers
(Optuna) can tune it.
"""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from recsys.jobs.train import objective
from recsys.runner import guarded

CONFIGS = str(Path(__file__).resolve().parents[1] / "configs")


@hydra.main(config_path=CONFIGS, config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    value: float | None = guarded(objective)(cfg)
    return value


if __name__ == "__main__":
    main()
