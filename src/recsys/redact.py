"""Secrets kept out of what a run leaves behind: the copies of its configuration Hydra saves
under ``<output dir>/.hydra/`` (config, Hydra config, command-line overrides)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

MASK = "***"
SECRET_KEY = re.compile(r"secret|password|passwd", re.IGNORECASE)
# scheme://user:password@host -> scheme://user:***@host
URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^/:@\s]*:)(?P<password>[^@/\s]+)@")
# key=value where the key names a secret: overrides, and Hydra's override_dirname (a,b,c)
ASSIGNMENT = re.compile(
    r"(?P<name>[\w.+~/-]*(?:secret|password|passwd)[\w.]*)=(?P<value>[^,\s]+)", re.IGNORECASE
)
SAVED = ("config.yaml", "hydra.yaml", "overrides.yaml")


def redact(value: Any, key: str = "") -> Any:
    """``value`` with secrets masked: the value of any key named like a secret (unless null)
    and the password of any URL; in ``key=value`` text (overrides), the values of such keys."""
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, key) for v in value]
    if isinstance(value, str):
        if SECRET_KEY.search(key):
            return MASK
        value = URL_PASSWORD.sub(rf"\g<head>{MASK}@", value)
        return ASSIGNMENT.sub(rf"\g<name>={MASK}", value)
    if value is not None and SECRET_KEY.search(key):
        return MASK
    return value


def redact_saved_config(folder: Path) -> None:
    """Rewrite Hydra's saved copies in ``folder`` (``.hydra``) with secrets masked."""
    for name in SAVED:
        path = folder / name
        if not path.is_file():
            continue
        saved = yaml.safe_load(path.read_text())
        masked = redact(saved)
        if masked != saved:
            path.write_text(yaml.safe_dump(masked, sort_keys=False))
