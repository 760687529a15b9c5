"""Compose the repository's Hydra configs in tests."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from recsys import runner

CONFIGS = runner.config_dir()


def compose_config(name: str, root: Path, overrides: list[str] | None = None) -> DictConfig:
    """Compose a repo config with all outputs under ``root``."""
    return runner.compose_config(name, overrides, root=root)
