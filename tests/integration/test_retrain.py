"""`recsys retrain` end to end on small synthetic data: two concurrent runs (one trains, the
other exits 2), a first candidate gated without production and promoted, stored events and an
erasure judged against production on one holdout, a no-op when nothing changed, and a broken
candidate rejected with its reason."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import polars as pl
import pytest
from tests.helpers.bundles import reversed_ranker
from tests.helpers.hydra import compose_config

from recsys.bundle.reader import load_bundle
from recsys.data.prepared import PreparedData
from recsys.jobs import retrain as job
from recsys.lifecycle import open_registry
from recsys.stores import Event, open_store

pytestmark = pytest.mark.integration

# A few epochs learn the planted structure. On 400 users, two good models differ by a few
# percent on the holdout (paired noise), so the relative rules are looser than the defaults
# (0.98); the recall floor is above popularity (~0.15) and far below a trained model (~0.7).
ARGS = [
    "experiment=synthetic_fast",
    "data.reader.n_users=400",
    "data.reader.n_books=300",
    "trainer.max_epochs=3",
    "ranker.trainer.max_epochs=2",
    "callbacks.progress_bar=null",
    "gate.latency_users=20",
    "gate.max_p99_ms=5000",  # a shared test machine's tail latency is no guarantee
    "gate.relative={recall@20: 0.9, ndcg@20: 0.85}",
    "++gate.floors={recall@20: 0.3}",  # ++ adds a rule to the defaults
    "promote_if_gated=true",
]
ERASED, NEWCOMER = "u7", "newcomer"


def _registry(root: Path) -> Any:
    return open_registry(f"sqlite:///{root}/artifacts/registry.db")


@pytest.fixture(scope="module")
def first(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two `recsys retrain` processes started together on an empty root."""
    root = tmp_path_factory.mktemp("retrain")
    env = {**os.environ, "RECSYS_ROOT": str(root)}
    command = [sys.executable, "-m", "recsys", "retrain", *ARGS]
    runs = [
        subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    done = [(run.wait(timeout=300), *run.communicate()) for run in runs]
    reports = sorted(root.glob("outputs/retrain/*/retrain.json"))
    return {"root": root, "runs": done, "reports": [json.loads(p.read_text()) for p in reports]}


def test_concurrent_retrains_one_runs_the_other_exits_2(first: dict[str, Any]) -> None:
    codes = sorted(code for code, _, _ in first["runs"])
    assert codes == [0, 2], [err[-2000:] for _, _, err in first["runs"]]
    _, _, refused = next(run for run in first["runs"] if run[0] == 2)
    assert "error: another retrain is running (pid " in refused
    assert ", since 20" in refused
    assert "Traceback" not in refused
    assert len(first["reports"]) == 1  # only one trained


def test_the_first_candidate_passes_the_gate_and_is_promoted(first: dict[str, Any]) -> None:
    report = first["reports"][0]
    assert report["gate"]["passed"], report["gate"]["reasons"]
    assert report["production"] is None
    assert report["candidate"]["recall@20"] > 0.3
    registry = _registry(first["root"])
    production = registry.production("synthetic")
    events = [e["event"] for e in registry.history("synthetic")]
    registry.close()
    assert production is not None
    assert Path(production.path) == Path(report["bundle"]).resolve()
    assert production.metrics["holdout/recall@20"] == report["candidate"]["recall@20"]
    assert events == ["registered", "gate", "promoted"]


def plausible_events(root: Path, users: int, per_user: int, now: float) -> list[Event]:
    """Reads a co-reader of each picked user made and the user did not: the planted taste."""
    data = PreparedData.load(root / "data" / "processed" / "synthetic")
    known = pl.concat([data.train, data.val])
    books = dict(known.group_by("user_id").agg("book_id").iter_rows())
    readers = dict(known.group_by("book_id").agg("user_id").iter_rows())
    rng = np.random.default_rng(7)
    events = []
    for user in rng.choice(sorted(books), users, replace=False):
        peer = rng.choice(readers[rng.choice(books[user])])
        new = [b for b in books[peer] if b not in set(books[user])][:per_user]
        events += [Event(str(user), b, "read", now + i) for i, b in enumerate(new)]
    return events


@pytest.fixture(scope="module")
def second(first: dict[str, Any]) -> dict[str, Any]:
    """A retrain after new events, a newcomer, and an erasure (with an event stored after it)."""
    root, now = first["root"], time.time()
    events = plausible_events(root, 60, 3, now)
    events += [Event(NEWCOMER, f"b{i}", "read", now + i) for i in range(6)]
    store = open_store(f"sqlite:///{root}/artifacts/stores/recsys.db")
    store.events.append(events)
    store.users.delete_user(ERASED, actor="test")
    store.events.append([Event(ERASED, "b1", "read", now + 10)])  # arrived after the erasure
    store.close()
    production = first["reports"][0]["bundle"]
    result = job.main(compose_config("retrain", root, ARGS))
    return {"root": root, "result": result, "events": len(events) + 1, "production": production}


def test_new_events_are_judged_against_production_on_one_holdout(second: dict[str, Any]) -> None:
    result = second["result"]
    candidate, production = result["candidate"], result["production"]
    assert result["data"]["new_events"] == second["events"] - 1  # the erased user's is out
    assert production["version"] == Path(second["production"]).name
    assert candidate["users"] == production["users"] == result["holdout"]["users"] > 300
    assert result["holdout"]["excludes"] == "production's training pairs"
    assert production["unknown_users"] >= 1
    assert candidate["unknown_users"] == 0
    assert result["gate"]["passed"], result["gate"]["reasons"]
    registry = _registry(second["root"])
    promoted = registry.production("synthetic")
    registry.close()
    assert promoted is not None
    assert Path(promoted.path) == Path(result["bundle"]).resolve()
    assert promoted.parent == production["version"]


def test_erased_users_are_not_in_the_training_data(second: dict[str, Any]) -> None:
    bundle = load_bundle(second["result"]["bundle"])
    users = set(bundle.known_histories.get_column("user_id").to_list())
    assert ERASED not in users
    assert ERASED not in bundle.state.users
    assert NEWCOMER in users
    assert NEWCOMER in bundle.state.users


def test_nothing_new_is_a_no_op(second: dict[str, Any]) -> None:
    root = second["root"]
    registry = _registry(root)
    before = len(registry.versions("synthetic"))
    result = job.main(compose_config("retrain", root, ARGS))
    assert result["skipped"]
    assert len(registry.versions("synthetic")) == before
    registry.close()


def test_a_broken_candidate_is_rejected_with_its_reason(
    second: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The candidate's ranker ranks its candidates in reverse (a derived bundle standing in
    for a ranker trained on shuffled labels): the gate rejects it and production stays."""
    root = second["root"]
    production = second["result"]["bundle"]
    broken = reversed_ranker(Path(production))
    monkeypatch.setattr(
        job, "run_training", lambda *_: SimpleNamespace(bundle=broken, report=lambda _: None)
    )
    result = job.main(compose_config("retrain", root, [*ARGS, "force=true"]))
    assert not result["gate"]["passed"]
    assert any(r.startswith("recall@20 ≥ 0.9 × production") for r in result["gate"]["reasons"])
    registry = _registry(root)
    rejected = registry.get("synthetic", broken.name)
    current = registry.production("synthetic")
    registry.close()
    assert rejected.stage == "rejected"
    assert rejected.reasons == tuple(result["gate"]["reasons"])
    assert current is not None
    assert Path(current.path) == Path(production).resolve()
