"""Serving defaults are written once (recsys.serving.settings) and every runner reads them:
the `recsys serve` Hydra config, the token config, and the Ray Serve config's builder args."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from tests.helpers.hydra import compose_config

from recsys.errors import RecsysError
from recsys.jobs.serve import settings
from recsys.serving.ray_app import RayAppArgs
from recsys.serving.settings import AuthSettings, LiveSettings, ServeSettings

RAY_CONFIG = Path(__file__).resolve().parents[2] / "serving" / "config.yaml"


def test_serve_config_is_the_typed_defaults_plus_paths(tmp_path: Path) -> None:
    typed = settings(compose_config("serve", tmp_path))
    defaults = ServeSettings()
    # what the YAML sets: paths only
    assert typed.store.url == f"sqlite:///{tmp_path}/artifacts/stores/recsys.db"
    assert typed.auth.secret_file == f"{tmp_path}/artifacts/secrets/jwt.key"
    assert typed.bundle == f"{tmp_path}/artifacts/bundles/synthetic"
    assert typed.ray.config.endswith("serving/config.yaml")
    # everything else is the model's default
    path_keys = {"store", "auth", "bundle", "ray"}
    assert typed.model_dump(exclude=path_keys) == defaults.model_dump(exclude=path_keys)
    assert typed.store.history_types == defaults.store.history_types
    assert typed.auth.model_dump(exclude={"secret_file"}) == AuthSettings().model_dump(
        exclude={"secret_file"}
    )


def test_cli_overrides_reach_the_settings(tmp_path: Path) -> None:
    cfg = compose_config(
        "serve",
        tmp_path,
        [
            "cache.redis_url=redis://127.0.0.1:6399/0",
            "store.url=null",
            "auth.enabled=false",
            "engine=ray",
            "ray.topology=chained",
        ],
    )
    typed = settings(cfg)
    assert typed.cache.redis_url == "redis://127.0.0.1:6399/0"
    assert typed.rate_limits.redis_url == "redis://127.0.0.1:6399/0"  # shared with the cache
    assert typed.store.url is None
    assert not typed.auth.enabled
    assert (typed.engine, typed.ray.topology) == ("ray", "chained")
    live = typed.live()
    assert isinstance(live, LiveSettings)
    assert live.cache.redis_url == typed.cache.redis_url


def test_bad_values_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(RecsysError, match=r"bad serve setting engine: .*'local' or 'ray'"):
        settings(compose_config("serve", tmp_path, ["engine=spark"]))
    with pytest.raises(RecsysError, match=r"bad serve setting cache\.ttl_s"):
        settings(compose_config("serve", tmp_path, ["cache.ttl_s=-1"]))


def test_token_config_reads_the_same_auth_defaults(tmp_path: Path) -> None:
    cfg = compose_config("token", tmp_path, ["sub=ann"])
    auth = AuthSettings.model_validate(dict(cfg.auth))
    assert auth.model_dump(exclude={"secret_file"}) == AuthSettings().model_dump(
        exclude={"secret_file"}
    )


def test_ray_config_names_only_what_differs() -> None:
    app = yaml.safe_load(RAY_CONFIG.read_text())["applications"][0]
    args = RayAppArgs.model_validate(app["args"])
    assert args.stage_timeout_ms == ServeSettings().stage_timeout_ms
    assert args.live.cache == LiveSettings().cache
    assert args.live.rate_limits == LiveSettings().rate_limits
    assert args.live.store.url is not None
    assert Path(args.live.store.url.removeprefix("sqlite:///")).is_absolute()
    assert args.live.auth.secret_file is not None
    assert Path(args.live.auth.secret_file).is_absolute()


def test_null_sections() -> None:
    live = LiveSettings.model_validate({"store": None, "cache": None, "rate_limits": None})
    assert live.store.url is None
    assert live.cache.enabled  # a null section keeps its defaults ...
    assert not live.rate_limits.enabled  # ... except rate limits, where null means none
    with pytest.raises(ValueError, match="extra"):
        LiveSettings.model_validate({"cache": {"ttl": 5}})  # a misspelt key is refused
