"""`recsys demo lifecycle` in a subprocess, on a copy of the trained test bundle and its data:
events over HTTP -> `recsys retrain` -> gate -> promotion -> the server answers with the new
version."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from recsys.lifecycle import open_registry

pytestmark = pytest.mark.integration


@pytest.mark.slow  # about a minute; `make demo` runs the same command
def test_demo_lifecycle_promotes_a_retrained_bundle(
    trained_bundle: dict[str, Any], tmp_path: Path
) -> None:
    source: Path = trained_bundle["root"]
    for part in ("data", "artifacts/bundles"):
        shutil.copytree(source / part, tmp_path / part)
    env = {**os.environ, "RECSYS_ROOT": str(tmp_path)}
    done = subprocess.run(
        [
            sys.executable, "-m", "recsys", "demo", "lifecycle", "readers=40",
            # the test bundle's settings (synthetic_fast), not make demo's
            'retrain=["experiment=synthetic_fast","callbacks.progress_bar=null",'
            '"gate.relative={recall@20: 0.9, ndcg@20: 0.9}","gate.max_p99_ms=5000"]',
        ],
        capture_output=True, text=True, env=env, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "promoted" in done.stdout
    registry = open_registry(f"sqlite:///{tmp_path / 'artifacts' / 'registry.db'}")
    (family,) = registry.families()
    versions = registry.versions(family)
    production = registry.production(family)
    assert production is not None
    assert len(versions) == 2
    assert production.version == versions[0].version  # the retrained one
    assert f"the server now answers with {production.version}" in done.stdout
    registry.close()
