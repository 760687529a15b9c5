"""The scheduled entries (training/schedule/: the nightly retrain, then retention) run commands
the configs accept."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import yaml
from tests.helpers.hydra import compose_config

SCHEDULE = Path(__file__).resolve().parents[2] / "training" / "schedule"


def composed(args: list[str], root: Path) -> object:
    """The config ``recsys <args>`` composes (environment references filled in): ``retrain``
    or ``models prune``."""
    name, rest = ("retrain", args[1:]) if args[0] == "retrain" else ("models_prune", args[2:])
    assert args[:2] == ["models", "prune"] or name == "retrain", args
    overrides = [re.sub(r"\$\((\w+)\)", "sqlite:///x.db", a) for a in rest]
    return compose_config(name, root, overrides)


def jobs() -> dict[str, dict]:  # type: ignore[type-arg]
    """The CronJobs of the manifest, by name."""
    documents = yaml.safe_load_all((SCHEDULE / "retrain-cronjob.yaml").read_text())
    return {d["metadata"]["name"]: d for d in documents}


def cron_commands() -> list[tuple[str, list[str]]]:
    """(schedule, recsys arguments) of each crontab line."""
    out = []
    for line in (SCHEDULE / "crontab").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split(maxsplit=5)
        assert len(fields) == 6  # five schedule fields and the command
        command = shlex.split(fields[5].split("&&", 1)[1].split(">>", 1)[0])
        assert command[0].endswith("bin/recsys")
        out.append((" ".join(fields[:5]), command[1:]))
    return out


def test_cronjob_runs_one_gated_retrain_at_a_time(tmp_path: Path) -> None:
    job = jobs()["recsys-retrain"]
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


def test_crontab_runs_a_gated_retrain_then_retention(tmp_path: Path) -> None:
    (retrain_at, retrain), (prune_at, prune) = cron_commands()
    cfg = composed(retrain, tmp_path)
    assert cfg.promote_if_gated is True  # type: ignore[attr-defined]
    retention = composed(prune, tmp_path)
    assert (retention.command, retention.keep) == ("prune", 10)  # type: ignore[attr-defined]
    assert retention.dry_run is False  # type: ignore[attr-defined]
    assert int(prune_at.split()[1]) > int(retrain_at.split()[1])  # after the retrain


def test_cronjob_prunes_after_the_retrain_against_the_same_registry(tmp_path: Path) -> None:
    retrain, prune = jobs()["recsys-retrain"], jobs()["recsys-prune"]
    assert prune["spec"]["concurrencyPolicy"] == "Forbid"
    hours = [int(j["spec"]["schedule"].split()[1]) for j in (retrain, prune)]
    assert hours[1] > hours[0]
    (container,) = prune["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    cfg = composed(container["args"], tmp_path)
    assert (cfg.command, cfg.keep, cfg.dry_run) == ("prune", 10, False)  # type: ignore[attr-defined]
    assert cfg.registry.url == "sqlite:///x.db"  # type: ignore[attr-defined]
    (retrainer,) = retrain["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert "paths.root_dir=/data" in container["args"]  # the bundles the retrain wrote
    assert {m["mountPath"] for m in container["volumeMounts"]} == {
        m["mountPath"] for m in retrainer["volumeMounts"]
    }
