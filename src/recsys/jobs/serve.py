"""`recsys serve`: the FastAPI app under uvicorn (``engine=local``, the embedded default: one
process, or ``workers=N``) or on Ray Serve (``engine=ray``, from ``serving/config.yaml``)."""

from __future__ import annotations

import signal
import threading

from omegaconf import DictConfig, OmegaConf

from recsys.errors import RecsysError
from recsys.serving.settings import ServeSettings, validated
from recsys.serving.workers import unshared


def settings(cfg: DictConfig) -> ServeSettings:
    """The composed config as typed settings (a bad value is a one-line error)."""
    raw = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(raw, dict)
    raw.pop("paths", None)
    return validated(ServeSettings, raw, "serve setting")


def main(cfg: DictConfig) -> None:
    from recsys.bundle.reader import load_bundle

    typed = settings(cfg)
    if typed.engine == "ray" and typed.auth.enabled and typed.auth.secret:
        raise RecsysError(
            "auth.secret is not handed to Ray replicas (it would be stored in the "
            "application's args, readable by anyone with access to the cluster): put the key "
            "in auth.secret_file on a volume every node mounts, or in RECSYS_JWT_SECRET where "
            "Ray starts."
        )
    problem = unshared(typed)
    if problem:  # before the bundle loads
        raise RecsysError(problem)
    bundle = load_bundle(typed.bundle)  # fail fast, with the bundle's own error message
    if typed.engine == "local":
        serve_local(typed, bundle)
    else:
        serve_ray(typed, str(bundle.path))


def serve_local(cfg: ServeSettings, bundle: object) -> None:
    from recsys.serving import workers

    processes = f", {cfg.workers} worker processes" if cfg.workers > 1 else ""
    print(f"serving on http://{cfg.host}:{cfg.port}{processes} (docs at /docs)")
    if cfg.auth.enabled:
        print(
            "auth is on: get a token with `recsys token sub=<user id>` "
            "(or start with auth.enabled=false)"
        )
    workers.serve(cfg, bundle)


def serve_ray(cfg: ServeSettings, bundle: str) -> None:
    from recsys.serving import ray_runner

    config = ray_runner.with_overrides(
        ray_runner.load_config(cfg.ray.config),
        bundle,
        host=str(cfg.host),
        port=int(cfg.port),
        topology=cfg.ray.topology,
        stage_timeout_ms=float(cfg.stage_timeout_ms),
        live=cfg.live().model_dump(mode="json"),
    )
    ray_runner.start_ray(cfg.ray.address, cfg.ray.num_cpus, cfg.ray.haproxy)
    import ray

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        ray_runner.deploy(config)
        topology = ray_runner.recsys_app(config)["args"].get("topology", "fused")
        print(
            f"Ray Serve ({topology}) serving {bundle} on http://{cfg.host}:{cfg.port} "
            "(docs at /docs); Ctrl-C stops"
        )
        stop.wait()
    finally:
        ray.shutdown()
