"""Compose the repository's Hydra configs in tests."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from recsys.jobs import common

CONFIGS = common.config_dir()


def compose_config(name: str, root: Path, overrides: list[str] | None = None) -> DictConfig:
    """Compose a repo config with all outputs under ``root``."""
    return common.compose_config(name, overrides, root=root)
