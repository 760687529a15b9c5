"""Job functions that take a Hydra DictConfig; the only package that imports hydra/omegaconf."""
