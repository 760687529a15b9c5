"""The scheduled retraining entries (training/schedule/) run a command the configs accept."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import yaml
from tests.helpers.hydra import compose_config

SCHEDULE = Path(__file__).resolve().parents[2] / "training" / "schedule"


def composed(args: list[str], root: Path) -> object:
    """The retrain config those arguments compose (environment references filled in)."""
    assert args[0] == "retrain", args
    overrides = [re.sub(r"\$\((\w+)\)", "sqlite:///x.db", a) for a in args[1:]]
    return compose_config("retrain", root, overrides)


def test_cronjob_runs_one_gated_retrain_at_a_time(tmp_path: Path) -> None:
    job = yaml.safe_load((SCHEDULE / "retrain-cronjob.yaml").read_text())
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "CronJob")
    spec = job["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert len(spec["schedule"].split()) == 5
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    assert container["command"] == ["recsys"]
    env = {e["name"] for e in container["env"]}
    assert {"RECSYS_STORE_URL", "RECSYS_REGISTRY_URL"} <= env
    cfg = composed(container["args"], tmp_path)
    assert cfg.promote_if_gated is True  # type: ignore[attr-defined]
    assert cfg.registry.url == "sqlite:///x.db"  # type: ignore[attr-defined]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert "paths.root_dir=/data" in container["args"]
    assert "/data" in mounts


def test_crontab_line_runs_a_gated_retrain(tmp_path: Path) -> None:
    lines = [
        line
        for line in (SCHEDULE / "crontab").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    (line,) = lines
    fields = line.split(maxsplit=5)
    assert len(fields) == 6  # five schedule fields and the command
    command = shlex.split(fields[5].split("&&", 1)[1].split(">>", 1)[0])
    assert command[0].endswith("bin/recsys")
    cfg = composed(command[1:], tmp_path)
    assert cfg.promote_if_gated is True  # type: ignore[attr-defined]
