"""The real `recsys` command in a subprocess: tables, JSON, and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

SMALL = ["data.reader.n_users=300", "data.reader.n_books=200"]


def recsys(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RECSYS_ROOT": str(tmp_path)}
    return subprocess.run(
        [sys.executable, "-m", "recsys", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def test_prepare_then_evaluate_writes_json(tmp_path: Path) -> None:
    done = recsys(tmp_path, "data", "prepare", *SMALL)
    assert done.returncode == 0, done.stderr
    assert "synthetic" in done.stdout
    processed = tmp_path / "data" / "processed" / "synthetic"
    summary = json.loads((processed / "summary.json").read_text())
    assert summary["users"] == 300
    assert {p.name for p in processed.iterdir()} >= {
        "train.parquet",
        "val.parquet",
        "books.parquet",
        "users.vocab.parquet",
        "books.vocab.parquet",
    }
    out = tmp_path / "m.json"
    done = recsys(tmp_path, "evaluate", *SMALL, f"out={out}")
    assert done.returncode == 0, done.stderr
    assert "recall@20" in done.stdout
    metrics = json.loads(out.read_text())["metrics"]
    assert 0 < metrics["recall@20"] < 1
    assert metrics["users"] == 300
    # the EASE baseline, on the validation carve and the test carve beside it
    done = recsys(tmp_path, "evaluate", *SMALL, "model=ease", f"out={out}")
    assert done.returncode == 0, done.stderr
    assert "EaseRecommender (test)" in done.stdout
    payload = json.loads(out.read_text())
    assert payload["model"] == "EaseRecommender"
    assert 0 < payload["test_metrics"]["recall@20"] < 1
    assert payload["test_metrics"]["users"] == summary["test"]["users"]


def test_errors_are_one_clear_line(tmp_path: Path) -> None:
    done = recsys(tmp_path, "data", "prepare", "data=amazon_book", f"data.reader.path={tmp_path}/x")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "does not exist" in done.stderr
    assert "data.reader.path" in done.stderr
    done = recsys(tmp_path, "data", "prepare", "data=custom")
    assert done.returncode == 2
    assert "data.reader.interactions" in done.stderr
    assert "Traceback" not in done.stderr
    done = recsys(tmp_path, "nonsense")
    assert done.returncode == 2
    assert "unknown command" in done.stderr


def test_bring_your_own_data(tmp_path: Path) -> None:
    events = tmp_path / "events.csv"
    lines = ["customer,sku,ts"] + [f"c{u},s{(u + i) % 40},{i}" for u in range(60) for i in range(8)]
    events.write_text("\n".join(lines) + "\n")
    done = recsys(
        tmp_path,
        "evaluate",
        "data=custom",
        f"data.reader.interactions={events}",
        "+data.reader.interaction_columns={user_id: customer, book_id: sku, timestamp: ts}",
        "split=leave_last_n",
        f"out={tmp_path}/m.json",
    )
    assert done.returncode == 0, done.stderr
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["data"]["split"]["kind"] == "leave_last_n"
    assert metrics["metrics"]["users"] == 60


def test_secrets_never_left_in_run_outputs(tmp_path: Path) -> None:
    """A key or a database password given on the command line is masked in the copies of
    the configuration Hydra saves under outputs/…/.hydra/; Ray is never handed the key."""
    secret = "k" * 24 + "-never-written"
    done = recsys(
        tmp_path,
        "token",
        "sub=u1",
        f"auth.secret={secret}",
        "+db=postgresql+psycopg://recsys:hunter2-pass@db:5432/recsys",
    )
    assert done.returncode == 0, done.stderr
    saved = list((tmp_path / "outputs").rglob(".hydra/*.yaml"))
    assert {p.name for p in saved} == {"config.yaml", "hydra.yaml", "overrides.yaml"}
    text = "".join(p.read_text() for p in saved)
    assert secret not in text
    assert "hunter2-pass" not in text
    assert "auth.secret=***" in text  # the override is still on record, masked
    assert "recsys:***@db" in text
    done = recsys(tmp_path, "serve", "engine=ray", f"auth.secret={secret}")
    assert done.returncode == 2
    assert "auth.secret_file" in done.stderr
    assert "Traceback" not in done.stderr
