"""The deployment files (Dockerfile, serving/kubernetes/) parse, agree with the configs they
come from, and name real entry points: the RayService embeds serving/config.production.yaml
as rendered (one source), its args are valid RayAppArgs and scale as designed (3-20 replicas);
the plain Deployment's command composes as `recsys serve` does and its autoscaler targets 70 %
CPU between 3 and 20 pods; the image installs with the constraints file."""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.helpers.hydra import compose_config

from recsys import deploy
from recsys.serving.ray_app import RayAppArgs
from recsys.serving.ray_runner import HAPROXY_ENV

REPO = Path(__file__).resolve().parents[2]
KUBE = REPO / "serving" / "kubernetes"


def documents(path: Path) -> dict[str, dict[str, Any]]:
    """The manifests of a file by kind."""
    return {d["kind"]: d for d in yaml.safe_load_all(path.read_text())}


def test_the_rayservice_is_rendered_from_the_production_serve_config() -> None:
    committed = (REPO / deploy.RAYSERVICE).read_text()
    assert committed == deploy.render(REPO), "run python scripts/render_kubernetes.py"
    service = documents(REPO / deploy.RAYSERVICE)["RayService"]
    assert service["apiVersion"] == "ray.io/v1"
    embedded = service["spec"]["serveConfigV2"]
    assert embedded == (REPO / deploy.SERVE_CONFIG).read_text()  # text for text


def test_a_changed_serve_config_shows_in_the_rendered_manifest(tmp_path: Path) -> None:
    """The check above can fail: a Serve config edited and not rendered again disagrees."""
    (tmp_path / "serving").mkdir()
    text = (REPO / deploy.SERVE_CONFIG).read_text().replace("max_replicas: 20", "max_replicas: 7")
    (tmp_path / deploy.SERVE_CONFIG).write_text(text)
    assert deploy.render(tmp_path) != (REPO / deploy.RAYSERVICE).read_text()
    assert "max_replicas: 7" in deploy.render(tmp_path)


def test_the_serve_config_names_a_real_builder_with_valid_args_and_design_scaling() -> None:
    config = yaml.safe_load((REPO / deploy.SERVE_CONFIG).read_text())
    (app,) = config["applications"]
    module, name = app["import_path"].split(":")
    assert callable(getattr(importlib.import_module(module), name))
    args = RayAppArgs.model_validate(app["args"])
    assert args.autoscaling is not None
    assert (args.autoscaling.min_replicas, args.autoscaling.max_replicas) == (3, 20)
    assert args.live.cache.redis_url
    assert args.live.store.url.startswith("postgresql")
    assert config["http_options"]["host"] == "0.0.0.0"


def test_the_ray_cluster_runs_haproxy_mounts_the_bundles_and_autoscales() -> None:
    service = documents(REPO / deploy.RAYSERVICE)["RayService"]
    cluster = service["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["rayVersion"] == importlib.import_module("ray").__version__
    serve = yaml.safe_load(service["spec"]["serveConfigV2"])
    bundle = serve["applications"][0]["args"]["bundle"]
    pods = [cluster["headGroupSpec"]["template"]] + [
        g["template"] for g in cluster["workerGroupSpecs"]
    ]
    for pod in pods:
        (container,) = pod["spec"]["containers"]
        env = {e["name"]: e["value"] for e in container["env"]}
        assert {k: env.get(k) for k in HAPROXY_ENV} == HAPROXY_ENV
        mounts = [m["mountPath"] for m in container["volumeMounts"]]
        assert any(bundle.startswith(m + "/") for m in mounts), (bundle, mounts)
        assert serve["http_options"]["port"] in [p["containerPort"] for p in container["ports"]]
    (group,) = cluster["workerGroupSpecs"]
    assert 1 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]


def test_the_plain_deployment_composes_as_recsys_serve_and_scales_on_cpu(tmp_path: Path) -> None:
    found = documents(KUBE / "app.yaml")
    pod = found["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["recsys"]
    assert container["args"][0] == "serve"
    overrides = [re.sub(r"\$\((\w+)\)", "redis://r:6379/0", a) for a in container["args"][1:]]
    cfg = compose_config("serve", tmp_path, overrides)
    assert cfg.workers == 2 and cfg.host == "0.0.0.0"  # noqa: PT018
    assert cfg.cache.redis_url == cfg.rate_limits.redis_url == "redis://r:6379/0"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == cfg.port
    assert found["Service"]["spec"]["ports"][0]["targetPort"] == "http"
    mounts = [m["mountPath"] for m in container["volumeMounts"]]
    assert any(str(cfg.bundle).startswith(m + "/") for m in mounts)
    assert str(cfg.auth.secret_file).startswith("/secrets/")
    assert "/secrets" in mounts
    # where the run writes (paths.root_dir: Hydra's outputs/) is not a read-only mount
    env = {e["name"]: e.get("value") for e in container["env"]}
    root = env.get("RECSYS_ROOT") or "/data"  # the image's default
    read_only = [m["mountPath"] for m in container["volumeMounts"] if m.get("readOnly")]
    assert not any(root == m or root.startswith(m + "/") for m in read_only), (root, read_only)
    hpa = found["HorizontalPodAutoscaler"]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (3, 20)
    (metric,) = hpa["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"] == {"type": "Utilization", "averageUtilization": 70}
    assert hpa["scaleTargetRef"]["name"] == found["Deployment"]["metadata"]["name"]
    assert "cpu" in container["resources"]["requests"]  # utilisation needs a request


def test_the_image_installs_with_the_constraints_file() -> None:
    text = (REPO / "Dockerfile").read_text()
    lines = text.replace("\\\n", " ").splitlines()  # continuation lines joined
    run = " && ".join(line[4:] for line in lines if line.startswith("RUN "))
    installs = [c for c in run.split("&&") if "pip install" in c]
    assert len(installs) == 2
    for command in installs:
        words = shlex.split(command)
        assert words[words.index("-c") + 1] == "constraints.txt", command
    assert "torch==2.13.0" in shlex.split(installs[0])
    assert "download.pytorch.org/whl/cpu" in text  # the CPU wheel, never a CUDA build
    copied = re.findall(r"^COPY (\S+)", text, flags=re.M)
    for needed in ("src", "configs", "serving", "constraints.txt", "pyproject.toml"):
        assert needed in copied or any(
            needed in c for c in re.findall(r"^COPY (.*)", text, flags=re.M)
        )
    assert re.search(r'^ENTRYPOINT \["recsys"\]', text, flags=re.M)
    assert re.search(r"^EXPOSE 8000$", text, flags=re.M)
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".venv", "artifacts", "data"} <= set(ignored)


def test_the_training_rayjob_is_rendered_and_runs_retrain_as_ddp_on_its_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    committed = (REPO / deploy.RAYJOB).read_text()
    assert committed == deploy.render_job(), "run python scripts/render_kubernetes.py"
    job = documents(REPO / deploy.RAYJOB)["RayJob"]
    assert job["apiVersion"] == "ray.io/v1"
    assert job["spec"]["shutdownAfterJobFinishes"] is True
    words = shlex.split(job["spec"]["entrypoint"])
    assert words[:2] == ["recsys", "retrain"]
    assert "retrain" in importlib.import_module("recsys.cli").COMMANDS
    # the pods' environment names the store and registry (no shell variable in the entrypoint)
    monkeypatch.setenv("RECSYS_STORE_URL", "postgresql+psycopg://u@db/recsys")
    monkeypatch.setenv("RECSYS_REGISTRY_URL", "postgresql+psycopg://u@db/registry")
    cfg = compose_config("retrain", tmp_path, words[2:])  # the overrides compose
    assert cfg.paths.store_url == "postgresql+psycopg://u@db/recsys"
    assert cfg.registry.url == "postgresql+psycopg://u@db/registry"
    assert cfg.engine == "ray"
    assert cfg.ray.address == "auto"
    cluster = job["spec"]["rayClusterSpec"]
    assert cluster["rayVersion"] == importlib.import_module("ray").__version__
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # no worker there
    (group,) = cluster["workerGroupSpecs"]
    (container,) = group["template"]["spec"]["containers"]
    cpus = int(container["resources"]["requests"]["cpu"])
    # the group's pods hold every Ray Train worker (a worker never spans two pods)
    per_pod = cpus // cfg.ray.cpus_per_worker
    assert cfg.trainer.workers <= group["minReplicas"] * per_pod
    for pod in (cluster["headGroupSpec"]["template"], group["template"]):
        (box,) = pod["spec"]["containers"]
        mounts = {m["name"]: m for m in box["volumeMounts"]}
        assert mounts["data"]["readOnly"] is False  # bundles and checkpoints are written
        assert str(cfg.ray.storage).startswith(mounts["data"]["mountPath"] + "/")
        env = {e["name"]: e for e in box["env"]}
        assert env["RECSYS_STORE_URL"]["valueFrom"]["secretKeyRef"]["key"] == "store-url"
        assert env["RECSYS_REGISTRY_URL"]["valueFrom"]["secretKeyRef"]["key"] == "registry-url"
    claim = {v["name"]: v for v in group["template"]["spec"]["volumes"]}["data"]
    assert claim["persistentVolumeClaim"]["claimName"] == "recsys-data"
