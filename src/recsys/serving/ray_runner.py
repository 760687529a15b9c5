"""Start Ray and deploy the recsys Serve application from a Serve config (``serving/config.yaml``).

This is what ``serve run serving/config.yaml`` does, callable from Python and from
``recsys serve engine=ray``: config-based deploys are what make a hot swap a lightweight
``reconfigure`` (only ``user_config`` changes), where ``serve.run`` of a rebuilt application
restarts replicas.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from recsys.errors import RecsysError

log = logging.getLogger(__name__)

APP_NAME = "recsys"


def ray_env() -> None:
    """Local Ray without token auth or usage reporting (Ray 2.60 turns auth on by default)."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


# Serve's HAProxy ingress (Ray >= 2.56's high-throughput mode). Beyond connection failures
# it replays a request whose replica closed the connection without answering or mid-answer (a
# replica killed mid-request): every recsys read is safe to replay, and a replayed event keeps
# its event_id, which the store deduplicates. The mode's other switch,
# RAY_SERVE_THROUGHPUT_OPTIMIZED=1 (direct gRPC between replicas), is left off: with it every
# call from the chained ingress to its stages failed (Ray 2.60, 2026-12-01). So is its part
# RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD=0 alone: 1.01-1.11x the throughput, but the drill
# that kills an Ingress replica under load got a 500 from Serve's fallback proxy in 2 of 3
# full-suite runs (2026-12-03, docs/results/serving.md).
HAPROXY_ENV = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_HAPROXY_RETRY_ON": "conn-failure empty-response junk-response",
}


def use_haproxy(wanted: bool | None, address: str | None) -> bool:
    """Whether a local Ray runs in the high-throughput mode: ``wanted`` None means where the
    ``haproxy`` binary is installed (else Serve's Python proxy, said in a log line); True
    requires it. A cluster (``address``) sets the variables where it starts Ray."""
    if address or wanted is False:
        return False
    installed = shutil.which("haproxy") is not None
    if wanted and not installed:
        raise RecsysError(
            "ray.haproxy=true needs the haproxy binary: apt-get install haproxy "
            "(`make install` does), or set ray.haproxy=false."
        )
    if not installed:
        log.warning(
            "haproxy is not installed: Ray Serve runs its Python proxy, about half the "
            "throughput (apt-get install haproxy, or `make install`, for the high-throughput "
            "mode)"
        )
    return installed


def start_ray(
    address: str | None = None, num_cpus: int | None = None, haproxy: bool | None = False
) -> None:
    """Connect to ``address`` or start a local Ray (no dashboard, quiet).

    ``haproxy``: a local Ray in Serve's high-throughput mode, HAProxy as the ingress
    (:data:`HAPROXY_ENV`; :func:`use_haproxy` says when). A cluster sets these variables
    where it starts Ray.
    """
    ray_env()
    import ray

    if ray.is_initialized():
        return
    haproxy = use_haproxy(haproxy, address)
    for key, value in HAPROXY_ENV.items():  # the Ray processes started below inherit these
        if haproxy and not address:
            os.environ[key] = value
        else:
            os.environ.pop(key, None)
    if address:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    else:
        ray.init(
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
            num_cpus=num_cpus,
        )


def load_config(path: str | Path) -> dict[str, Any]:
    try:
        config = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise RecsysError(f"cannot read Serve config {path}: {exc.strerror}.") from None
    if not isinstance(config, dict) or not config.get("applications"):
        raise RecsysError(f"{path} is not a Serve config (no `applications:` list).")
    return config


def with_overrides(
    config: dict[str, Any],
    bundle: str | None = None,
    host: str | None = None,
    port: int | None = None,
    **args: Any,
) -> dict[str, Any]:
    """A copy of ``config`` with the recsys application's bundle, HTTP address and builder
    ``args`` (those not None) overridden: a fresh deployment."""
    out = copy.deepcopy(config)
    app = recsys_app(out)
    if host is not None or port is not None:
        http = out.setdefault("http_options", {})
        if host is not None:
            http["host"] = host
        if port is not None:
            http["port"] = int(port)
    app.setdefault("args", {}).update({k: v for k, v in args.items() if v is not None})
    if bundle is not None:
        app["args"]["bundle"] = str(Path(bundle).expanduser().resolve())
    return with_swapped_bundle(out, app["args"]["bundle"]) if bundle is not None else out


def with_swapped_bundle(config: dict[str, Any], bundle: str) -> dict[str, Any]:
    """A copy of ``config`` that hot-swaps to ``bundle``: only the deployments' ``user_config``
    changes, so applying it reconfigures the running replicas instead of replacing them."""
    out = copy.deepcopy(config)
    app = recsys_app(out)
    path = str(Path(bundle).expanduser().resolve())
    for name in deployment_names(app.get("args", {}).get("topology", "fused")):
        deployments = app.setdefault("deployments", [])
        entry = next((d for d in deployments if d["name"] == name), None)
        if entry is None:
            entry = {"name": name}
            deployments.append(entry)
        entry.setdefault("user_config", {})["bundle"] = path
    return out


def deployment_names(topology: str) -> list[str]:
    return ["Retrieval", "Ranking", "Ingress"] if topology == "chained" else ["Ingress"]


def recsys_app(config: dict[str, Any]) -> dict[str, Any]:
    for app in config["applications"]:
        if app.get("name", APP_NAME) == APP_NAME:
            app_dict: dict[str, Any] = app
            return app_dict
    raise RecsysError(f"the Serve config has no application named '{APP_NAME}'.")


def deploy(config: dict[str, Any], timeout_s: float = 180.0) -> None:
    """Deploy (or update) the applications in ``config`` and wait until they run.

    Ray must be started (:func:`start_ray`). An update that changes only ``user_config`` is a
    hot swap: replicas stay up and ``reconfigure`` loads the new bundle.
    """
    from ray.serve._private import api as serve_api
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(config)
    client = serve_api.serve_start(
        http_options=schema.http_options.model_dump(), proxy_location=schema.proxy_location
    )
    submitted = time.time()
    client.deploy_apps(schema, _blocking=False)
    wait_running(submitted, timeout_s)


def wait_running(submitted: float, timeout_s: float, settle_s: float = 1.0) -> None:
    """Wait until the config submitted at ``submitted`` runs: the application reports it
    deployed, then RUNNING with every deployment HEALTHY for ``settle_s`` (an update that
    only reconfigures replicas shows as UPDATING within one controller tick)."""
    from ray import serve

    deadline = time.monotonic() + timeout_s
    healthy_since: float | None = None
    while time.monotonic() < deadline:
        app = serve.status().applications.get(APP_NAME)
        if app is not None and app.status in ("DEPLOY_FAILED", "UNHEALTHY"):
            raise RecsysError(f"Serve application '{APP_NAME}' {app.status}: {app.message}")
        ok = (
            app is not None
            and app.last_deployed_time_s >= submitted - 1
            and app.status == "RUNNING"
            and all(d.status == "HEALTHY" for d in app.deployments.values())
        )
        if not ok:
            healthy_since = None
        elif healthy_since is None:
            healthy_since = time.monotonic()
        elif time.monotonic() - healthy_since >= settle_s:
            return
        time.sleep(0.1)
    raise RecsysError(f"Serve application '{APP_NAME}' not running after {timeout_s:.0f} s.")
