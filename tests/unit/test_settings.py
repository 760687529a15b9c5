"""Serving defaults are written once (recsys.serving.settings) and every runner reads them:
the `recsys serve` Hydra config, the token config, and the Ray Serve config's builder args."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from tests.helpers.hydra import compose_config

from recsys.errors import RecsysError
from recsys.jobs.serve import settings
from recsys.serving.live import Live
from recsys.serving.ray_app import RayAppArgs
from recsys.serving.settings import AuthSettings, LiveSettings, ServeSettings
from recsys.stores import HISTORY_EVENT_TYPES

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


# The serving defaults as configs/serve.yaml, serving/config.yaml and RayAppArgs wrote them
# before they had one home (1e13f07): moving them must change none.
SERVE_DEFAULTS = {
    "engine": "local",
    "host": "127.0.0.1",
    "port": 8000,
    "stage_timeout_ms": 100.0,
    "store": {"history_types": ["view", "rate", "want_to_read", "read", "purchase"]},
    "trending": {"half_life_hours": 6.0, "window_days": 7.0, "refresh_s": 10.0},
    "cache": {
        "enabled": True,
        "ttl_s": 3600.0,
        "l1_ttl_s": 10.0,
        "max_users": 100000,
        "redis_url": None,
    },
    "auth": {
        "enabled": True,
        "algorithm": "HS256",
        "secret": None,
        "public_key_file": None,
        "issuer": "recsys",
        "audience": "recsys-api",
        "leeway_s": 30.0,
    },
    "rate_limits": {"enabled": True, "default": "1000/minute", "endpoints": {}},
    "max_body_bytes": 1000000,
    "experiments": {"file": None, "poll_s": 1.0},
    "monitoring": {"coverage_window_s": 3600.0, "drift_window": 2000, "drift_min_samples": 200},
    "registry": {"url": None, "poll_s": 2.0, "family": None},  # plain `recsys serve`: off
    "ray": {"address": None, "topology": None, "num_cpus": None},
}


def _subset(value: object, expected: object) -> bool:
    if isinstance(expected, dict):
        assert isinstance(value, dict)
        return all(_subset(value[k], v) for k, v in expected.items())
    return value == expected


def test_defaults_did_not_move(tmp_path: Path) -> None:
    served = settings(compose_config("serve", tmp_path)).model_dump(mode="json")
    assert _subset(served, SERVE_DEFAULTS)
    ray = RayAppArgs.model_validate({"bundle": "b"})
    assert (ray.topology, ray.stage_timeout_ms, ray.ingress_replicas) == ("fused", 100.0, 1)
    assert (ray.max_batch_size, ray.batch_wait_timeout_ms, ray.max_ongoing_requests) == (16, 0, 32)
    # code-built live settings: no store, cache and auth on, no rate limits (as before)
    live = Live.from_config({})
    assert not live.stores.persistent
    assert live.cache is not None
    assert live.auth.enabled
    assert live.limiter is None
    assert ray.live.rate_limits is None


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
            "rate_limits.endpoints={/events: 6000/minute}",  # a map that takes new keys
        ],
    )
    typed = settings(cfg)
    assert typed.rate_limits is not None
    assert typed.rate_limits.endpoints == {"/events": "6000/minute"}
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
    with pytest.raises(RecsysError, match=r"bad serve setting monitoring\.coverage_window_s"):
        settings(compose_config("serve", tmp_path, ["monitoring.coverage_window_s=0"]))


MODELS_COMMANDS = ("list", "show", "register", "promote", "rollback", "prune")


def test_one_registry_config_for_serve_and_the_models_commands(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/artifacts/registry.db"
    typed = settings(compose_config("serve", tmp_path, ["registry=default", "registry.poll_s=5"]))
    assert (typed.registry.url, typed.registry.poll_s) == (url, 5.0)
    assert typed.live().registry.url == url  # what Ray replicas receive
    for command in MODELS_COMMANDS:
        required = {"show": ["version=v"], "promote": ["version=v"], "register": ["bundle=b"]}
        cfg = compose_config(f"models_{command}", tmp_path, required.get(command, []))
        assert (cfg.command, cfg.registry.url) == (command, url)
    args = RayAppArgs.model_validate(
        {"bundle": "b", "live": {"registry": {"url": "sqlite:///r.db"}}}
    )
    assert args.live.registry.url == f"sqlite:///{Path.cwd() / 'r.db'}"  # replicas' cwd differs


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
    assert args.live.rate_limits == ServeSettings().rate_limits  # as `recsys serve` limits
    assert args.live.store.url is not None
    assert Path(args.live.store.url.removeprefix("sqlite:///")).is_absolute()
    assert args.live.auth.secret_file is not None
    assert Path(args.live.auth.secret_file).is_absolute()


def test_null_sections() -> None:
    live = LiveSettings.model_validate(
        {"store": {"history_types": None}, "cache": None, "rate_limits": None}
    )
    assert live.store.url is None
    assert live.store.history_types == list(HISTORY_EVENT_TYPES)  # null: every type
    assert live.cache.enabled  # a null section keeps its defaults ...
    assert live.rate_limits is None  # ... except rate limits, where null means none
    watch = Live.from_config({"monitoring": {"drift_window": 50}}).monitoring
    assert (watch.drift_window, watch.drift_min_samples) == (50, 200)
    with pytest.raises(RecsysError, match=r"bad serving setting cache\.ttl"):
        Live.from_config({"cache": {"ttl": 5}})  # a misspelt key is refused, in one line
    with pytest.raises(RecsysError, match=r"bad serving setting store\.history_types"):
        Live.from_config({"store": {"history_types": ["skim"]}})


def test_production_ray_config_survives_a_replica_death() -> None:
    """The production Serve config never runs fewer than two replicas of a deployment (it
    autoscales each from 3) and shares its state (store, cache, rate limits) outside them."""
    path = RAY_CONFIG.with_name("config.production.yaml")
    app = yaml.safe_load(path.read_text())["applications"][0]
    args = RayAppArgs.model_validate(app["args"])
    assert args.topology == "chained"
    assert args.autoscaling is not None
    assert args.autoscaling.min_replicas >= 2
    assert args.live.store.url is not None
    assert args.live.store.url.startswith("postgresql")
    assert args.live.cache.redis_url is not None
    assert args.live.rate_limits is not None
    assert args.live.rate_limits.redis_url == args.live.cache.redis_url
