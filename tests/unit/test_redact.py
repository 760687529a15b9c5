from __future__ import annotations

from pathlib import Path

import yaml

from recsys.redact import MASK, redact, redact_saved_config


def test_redact_masks_secret_keys_urls_and_overrides() -> None:
    config = {
        "auth": {"secret": "abc", "secret_file": "/keys/jwt.key", "algorithm": "HS256"},
        "store": {"url": "postgresql+psycopg://app:p%40ss@db:5432/recsys", "password": None},
        "cache": {"redis_url": "redis://:s3cret@redis:6379/0"},
        "plain": "sqlite:///artifacts/stores/recsys.db",
        "n": 3,
    }
    masked = redact(config)
    assert masked["auth"] == {"secret": MASK, "secret_file": MASK, "algorithm": "HS256"}
    assert masked["store"] == {
        "url": "postgresql+psycopg://app:***@db:5432/recsys",
        "password": None,
    }
    assert masked["cache"]["redis_url"] == "redis://:***@redis:6379/0"
    assert masked["plain"] == config["plain"]
    assert masked["n"] == 3
    overrides = ["auth.secret=abc", "port=8001", "store.url=postgresql://u:pw@h/db"]
    assert redact(overrides) == [
        "auth.secret=***",
        "port=8001",
        "store.url=postgresql://u:***@h/db",
    ]


def test_redact_saved_config_rewrites_only_what_holds_secrets(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"auth": {"secret": "abc"}}))
    (tmp_path / "overrides.yaml").write_text(yaml.safe_dump(["port=1"]))
    before = (tmp_path / "overrides.yaml").stat().st_mtime_ns
    redact_saved_config(tmp_path)
    assert yaml.safe_load((tmp_path / "config.yaml").read_text()) == {"auth": {"secret": MASK}}
    assert (tmp_path / "overrides.yaml").stat().st_mtime_ns == before
