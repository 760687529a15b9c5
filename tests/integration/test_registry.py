"""The model registry (SQLite and a real PostgreSQL): transitions and their errors, concurrent
promoters, retention, the `recsys models` commands, and a running server's heartbeat and
reload endpoint. Promotion and rollback under load: test_registry_load.py."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import yaml
from tests.helpers.bundles import copy_version, two_versions

from recsys.bundle.reader import load_bundle
from recsys.errors import BundleError, RecsysError
from recsys.lifecycle import Registry, open_registry
from recsys.lifecycle.schema import metadata, servers
from recsys.serving.app import create_app
from recsys.serving.auth import MODELS_WRITE, Authenticator
from recsys.serving.live import Live
from recsys.serving.local import serve_in_thread
from recsys.serving.service import RecommendationService

pytestmark = pytest.mark.integration

SECRET = "registry-tests-only-secret-0123456789abcdef"


@pytest.fixture(scope="module")
def family(trained_bundle: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Any:
    return two_versions(Path(trained_bundle["bundle"]), tmp_path_factory.mktemp("registry"))


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    from tests.helpers.postgres_server import PostgresServer

    server = PostgresServer()
    server.start()
    yield server.url
    server.remove()


@pytest.fixture(params=["sqlite", "postgresql"])
def registry(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Registry]:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres")
    opened = open_registry(url)
    yield opened
    metadata.drop_all(opened.db.engine)  # the next test starts from an empty registry
    opened.close()


def latest(family: dict[str, Any]) -> str:
    return (family["folder"] / "LATEST").read_text().strip()


def test_transitions_and_their_errors(registry: Registry, family: dict[str, Any]) -> None:
    name, old, new = family["name"], family["old"], family["new"]
    first = registry.register(old, actor="ci", metrics={"gate_recall": 0.5})
    assert (first.family, first.version, first.stage) == (name, old.name, "candidate")
    manifest = load_bundle(old).manifest
    assert first.data_fingerprint == manifest.data_fingerprint
    assert first.metrics == {**manifest.metrics, "gate_recall": 0.5}
    assert registry.register(old, actor="someone else") == first  # idempotent
    second = registry.register(new, actor="ci")
    assert second.parent == old.name  # the lineage from the manifest
    assert registry.families() == [name]
    assert [v.version for v in registry.versions(name)] == [new.name, old.name]  # newest first
    with pytest.raises(RecsysError, match="recsys models list"):
        registry.get(name, "nope")

    assert registry.production(name) is None
    registry.promote(name, old.name, "ann", "first")
    assert latest(family) == old.name
    promoted = registry.promote(name, new.name, "bob", "better")
    assert (promoted.stage, promoted.actor, promoted.reasons) == ("production", "bob", ("better",))
    assert registry.get(name, old.name).stage == "archived"
    assert latest(family) == new.name
    with pytest.raises(RecsysError, match="roll back or promote another"):
        registry.reject(name, new.name, ["late"], "gate")

    back = registry.rollback(name, "ann", "bad canary")
    assert (back.version, back.stage) == (old.name, "production")
    assert registry.get(name, new.name).stage == "archived"
    assert latest(family) == old.name
    with pytest.raises(RecsysError, match="no earlier production version"):
        registry.rollback(name, "ann")

    rejected = registry.reject(name, new.name, ["recall dropped"], "gate")
    assert (rejected.stage, rejected.reasons) == ("rejected", ("recall dropped",))
    with pytest.raises(RecsysError, match="is rejected and cannot become production"):
        registry.promote(name, new.name, "ann")
    registry.log(name, old.name, "canary", {"share": 0.1}, "ops")
    events = [e["event"] for e in registry.history(name, old.name)]
    assert events == ["registered", "promoted", "rolled_back", "canary"]
    assert [e["event"] for e in registry.history(name)].count("rejected") == 1


def test_a_changed_bundle_is_never_promoted(registry: Registry, family: dict[str, Any]) -> None:
    copy = copy_version(family["old"], family["old"].name + "-tampered")
    registry.register(copy)
    ranker = next((copy / "ranker").glob("*.pt"))
    ranker.write_bytes(ranker.read_bytes()[:-4] + b"\0\0\0\0")  # changed after registering
    with pytest.raises(BundleError, match="checksum mismatch"):
        registry.promote(family["name"], copy.name, "ann")
    assert registry.production(family["name"]) is None
    shutil.rmtree(copy)
    with pytest.raises(BundleError, match="does not exist"):
        registry.register(copy)


def test_concurrent_promoters_leave_one_production(
    registry: Registry, family: dict[str, Any]
) -> None:
    name = family["name"]
    extra = copy_version(family["old"], family["old"].name + "-c")
    candidates = [registry.register(p).version for p in (family["old"], family["new"], extra)]
    start, errors = threading.Barrier(6), []

    def promoter(worker: int) -> None:
        mine = open_registry(registry.url)  # its own connections, as another process has
        start.wait()
        for i in range(4):
            try:
                mine.promote(name, candidates[(worker + i) % 3], f"worker{worker}")
            except Exception as exc:
                errors.append(exc)
        mine.close()

    threads = [threading.Thread(target=promoter, args=(w,)) for w in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    production = [v.version for v in registry.versions(name) if v.stage == "production"]
    assert len(production) == 1
    assert registry.production(name) == registry.get(name, production[0])
    assert latest(family) == production[0]  # LATEST moved in the same locked transaction
    moves = [e["details"]["to"] for e in registry.history(name) if e["event"] == "promoted"]
    assert moves[-1] == production[0]
    assert all(a != b for a, b in itertools.pairwise(moves))  # each one a real switch
    # the schema itself refuses a second production version
    other = next(v for v in candidates if v != production[0])
    second = sa.text("UPDATE model_versions SET stage = 'production' WHERE version = :v")
    with pytest.raises(sa.exc.IntegrityError), registry.db.write() as conn:
        conn.execute(second, {"v": other})
    shutil.rmtree(extra)


def test_retention_never_deletes_production_predecessors_or_in_use(
    tmp_path: Path, family: dict[str, Any]
) -> None:
    registry = open_registry(f"sqlite:///{tmp_path / 'registry.db'}")
    name, old = family["name"], family["old"]
    copies = [copy_version(old, f"{old.name}-p{i}") for i in range(1, 5)]
    for path in [old, *copies, family["new"]]:
        registry.register(path)
    c1, c2, c3, c4 = (c.name for c in copies)
    for version in (c1, c2, c3, old.name):
        registry.promote(name, version, "ci")
    registry.reject(name, c4, ["worse"], "gate")
    # production old; its predecessors c3, c2, c1; new waits (registered after production)
    assert {v.version for v in registry.prunable(name, keep=1)} == {c1, c2, c4}
    gone = registry.prune(name, keep=1, in_use={c1}, actor="ops")
    assert {v.version for v in gone} == {c2, c4}
    assert all(v.stage == "deleted" for v in gone)
    assert not (family["folder"] / c2).exists()
    assert not (family["folder"] / c4).exists()
    assert {v.version for v in registry.versions(name)} == {old.name, c1, c3, family["new"].name}
    assert len(registry.versions(name, deleted=True)) == 6

    registry.heartbeat("server-a", [(name, c3)], poll_s=1.0)  # a running server uses c3
    assert {v.version for v in registry.prune(name, keep=0)} == {c1}
    with registry.db.write() as conn:  # the server died an hour ago: its heartbeat is stale
        conn.execute(servers.update().values(last_seen=time.time() - 3600))
    assert {v.version for v in registry.prune(name, keep=0)} == {c3}
    assert registry.production(name).version == old.name
    assert old.is_dir()
    assert (family["folder"] / family["new"].name).is_dir()
    with pytest.raises(RecsysError, match=f"{c3} is deleted"):
        registry.rollback(name, "ops")
    registry.close()


def recsys(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RECSYS_ROOT": str(tmp_path), "USER": "tester"}
    return subprocess.run(
        [sys.executable, "-m", "recsys", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def test_models_commands(tmp_path: Path, family: dict[str, Any]) -> None:
    url = f"registry.url=sqlite:///{tmp_path / 'registry.db'}"
    registry = open_registry(url.removeprefix("registry.url="))
    old, new = family["old"].name, family["new"].name
    registry.register(family["old"], stage="production", actor="ci")
    registry.register(family["new"], actor="ci")
    registry.close()
    done = recsys(tmp_path, "models", "promote", f"version={new}", "reason=better", url)
    assert done.returncode == 0, done.stderr
    assert f"{new} is production (was {old})" in done.stdout
    assert "archived" in done.stdout
    assert "better" in done.stdout
    done = recsys(tmp_path, "models", "rollback", url)
    assert done.returncode == 0, done.stderr
    assert f"rolled back to {old} (was {new})" in done.stdout
    done = recsys(tmp_path, "models", "list", url)
    assert done.returncode == 0, done.stderr
    assert f"production {old}" in done.stdout
    assert "tester" in done.stdout
    done = recsys(tmp_path, "models", "show", "version=nope", url)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: no family holds version 'nope': `recsys models list` lists them."
    ]


def bearer(scopes: list[str] | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {Authenticator(secret=SECRET).issue('ops', scopes)}"}


def test_a_running_server_reports_its_versions_and_reloads_on_demand(
    tmp_path: Path, family: dict[str, Any]
) -> None:
    name, old, new = family["name"], family["old"], family["new"]
    registry = open_registry(f"sqlite:///{tmp_path / 'registry.db'}")
    registry.register(old, stage="production")
    registry.register(new)
    experiments = tmp_path / "experiments.yaml"
    variant = {"name": "x", "variants": {"control": 50, "treatment": 50}}
    variant["settings"] = {"treatment": {"bundle": str(new)}}
    experiments.write_text(yaml.safe_dump({"experiments": [variant]}))
    live = Live.from_config(
        {
            "cache": {"enabled": False},
            "auth": {"enabled": True, "secret": SECRET},
            "experiments": {"file": str(experiments)},
            "registry": {"url": registry.url, "poll_s": 60},  # only the endpoint moves it
        }
    )
    app = create_app(lambda: RecommendationService(load_bundle(old), 10.0, live=live))
    with serve_in_thread(app) as base, httpx.Client(base_url=base, timeout=30) as client:
        deadline = time.monotonic() + 10
        while not any(s.fresh for s in registry.servers()):
            assert time.monotonic() < deadline, "no heartbeat"
            time.sleep(0.05)
        (beat,) = registry.servers()
        assert set(beat.serving) == {(name, old.name), (name, new.name)}
        assert client.post("/models/reload").status_code == 401
        assert client.post("/models/reload", headers=bearer()).status_code == 403
        registry.promote(name, new.name, "ci")
        body = client.post("/models/reload", headers=bearer([MODELS_WRITE])).json()
        expected = {"family": name, "production": new.name, "bundle_version": new.name}
        assert body == {**expected, "switched": True, "follow_error": None}
        registry.rollback(name, "ci")
        body = client.post("/models/reload", headers=bearer([MODELS_WRITE])).json()
        assert (body["bundle_version"], body["switched"]) == (old.name, True)
        registry.reject(name, new.name, ["worse"], "gate")
        assert registry.prune(name, keep=0) == []  # new: an experiment's variant uses it
    assert registry.servers() == []  # the stopped server withdrew its heartbeat
    assert [v.version for v in registry.prunable(name, keep=0)] == [new.name]
    registry.close()


def test_reload_on_a_server_that_follows_no_registry(family: dict[str, Any]) -> None:
    bundle = load_bundle(family["old"])
    with serve_in_thread(create_app(lambda: RecommendationService(bundle, 10.0))) as base:
        answer = httpx.post(f"{base}/models/reload", timeout=30)
        assert answer.status_code == 409
        assert "registry.url" in answer.json()["detail"]
