"""Batch scoring and embedding export on the session bundle: output format, consistency with
the online answer, resume, Ray Data executor, the export validator, and one-line errors."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import polars as pl
import pytest
from omegaconf import OmegaConf

from recsys.bundle.reader import load_bundle
from recsys.errors import RecsysError
from recsys.jobs.batch_score import main as batch_main
from recsys.offline.batch import SCHEMA, make_plan, read_users
from recsys.offline.export import export_embeddings, validate_export
from recsys.serving.app import create_app
from recsys.serving.local import serve_in_thread
from recsys.serving.service import RecommendationService

pytestmark = pytest.mark.integration


def batch_cfg(bundle: str, out: Path, **overrides: Any) -> Any:
    cfg = {
        "bundle": bundle,
        "users": "all",
        "k": 50,
        "out": str(out),
        "chunk_size": 64,
        "executor": "local",
        "progress": False,
        "ray": {"address": None, "workers": 2},
    }
    cfg.update(overrides)
    return OmegaConf.create(cfg)


@pytest.fixture(scope="module")
def scored(trained_bundle: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All users, k=50, plus two unknown ids from a users file."""
    bundle = load_bundle(trained_bundle["bundle"])
    root = tmp_path_factory.mktemp("batch")
    users = root / "users.txt"
    ids = bundle.known_histories.get_column("user_id").to_list()
    users.write_text("\n".join([*ids, "ghost-1", ids[0], "ghost-2"]) + "\n")
    out = root / "out"
    batch_main(batch_cfg(trained_bundle["bundle"], out, users=str(users)))
    return out


def test_batch_output_format_and_exclusions(scored: Path, trained_bundle: dict[str, Any]) -> None:
    bundle = load_bundle(trained_bundle["bundle"])
    frame = pl.read_parquet(scored / "part-*.parquet")
    assert dict(frame.schema) == SCHEMA
    known = dict(bundle.known_histories.iter_rows())
    assert frame.get_column("user_id").n_unique() == len(known)
    per_user = frame.group_by("user_id").agg(pl.col("rank"), pl.col("book_id"), pl.col("score"))
    for user_id, ranks, books, scores in per_user.iter_rows():
        assert ranks == list(range(1, 51))
        assert len(set(books)) == 50
        assert not set(books) & set(known[user_id])  # every known interaction is excluded
        assert all(a >= b for a, b in itertools.pairwise(scores))
    # The validation carve is part of what is known: never recommended back.
    val = trained_bundle["data"].val.select("user_id", "book_id")
    hits = frame.join(val, on=["user_id", "book_id"], how="inner")
    assert hits.height == 0
    manifest = json.loads((scored / "manifest.json").read_text())
    assert manifest["unknown_users"] == 2
    assert manifest["rows"] == frame.height
    assert (scored / "unknown_users.txt").read_text().split() == ["ghost-1", "ghost-2"]
    assert set(frame.get_column("bundle_version").unique()) == {bundle.version}


def test_batch_equals_online_answer(scored: Path, trained_bundle: dict[str, Any]) -> None:
    bundle = load_bundle(trained_bundle["bundle"])
    frame = pl.read_parquet(scored / "part-*.parquet")
    users = bundle.known_histories.get_column("user_id").to_list()
    sample = [users[i] for i in np.random.default_rng(0).choice(len(users), 12, replace=False)]
    app = create_app(lambda: RecommendationService(bundle, stage_timeout_s=10.0))
    with serve_in_thread(app) as base, httpx.Client(base_url=base, timeout=30) as client:
        for user_id in sample:
            online = client.post(f"/recommendations/users/{user_id}", json={"limit": 50}).json()
            assert online["metadata"]["source"] == "personalized"
            offline = frame.filter(pl.col("user_id") == user_id).sort("rank")
            assert [i["book_id"] for i in online["recommendations"]] == offline.get_column(
                "book_id"
            ).to_list()
            np.testing.assert_allclose(
                [i["confidence_score"] for i in online["recommendations"]],
                offline.get_column("score").to_numpy(),
                atol=1e-5,
            )


def test_resume_skips_finished_chunks(
    trained_bundle: dict[str, Any], scored: Path, tmp_path: Path
) -> None:
    out = tmp_path / "resume"
    cfg = batch_cfg(trained_bundle["bundle"], out, chunk_size=256)
    batch_main(cfg)
    parts = sorted(out.glob("part-*.parquet"))
    assert len(parts) >= 3
    before = {p.name: p.stat().st_mtime_ns for p in parts}
    first = pl.read_parquet(out / "part-*.parquet")
    parts[1].unlink()  # as if the job had died in the middle
    (out / "manifest.json").unlink()
    manifest = batch_main(cfg)
    after = {p.name: p.stat().st_mtime_ns for p in sorted(out.glob("part-*.parquet"))}
    assert after.keys() == before.keys()
    assert [n for n in after if after[n] != before[n]] == [parts[1].name]
    assert pl.read_parquet(out / "part-*.parquet").equals(first)
    assert manifest["rows"] == first.height
    with pytest.raises(RecsysError, match="different job"):
        batch_main(batch_cfg(trained_bundle["bundle"], out, chunk_size=256, k=10))


def test_ray_data_executor_matches_local(trained_bundle: dict[str, Any], tmp_path: Path) -> None:
    local, ray_out = tmp_path / "local", tmp_path / "ray"
    users = tmp_path / "users.csv"
    ids = load_bundle(trained_bundle["bundle"]).known_histories.get_column("user_id")[:300]
    pl.DataFrame({"user_id": ids, "other": 1}).write_csv(users)
    batch_main(batch_cfg(trained_bundle["bundle"], local, users=str(users), k=20, chunk_size=100))
    manifest = batch_main(
        batch_cfg(
            trained_bundle["bundle"],
            ray_out,
            users=str(users),
            k=20,
            chunk_size=100,
            executor="ray",
        )
    )
    assert manifest["executor"] == "ray"
    assert len(manifest["files"]) == 3
    assert pl.read_parquet(ray_out / "part-*.parquet").equals(
        pl.read_parquet(local / "part-*.parquet")
    )


def test_user_files(trained_bundle: dict[str, Any], tmp_path: Path) -> None:
    bundle = load_bundle(trained_bundle["bundle"])
    parquet = tmp_path / "u.parquet"
    pl.DataFrame({"user_id": ["u1", "u2", None, "u1"]}).write_parquet(parquet)
    assert read_users(str(parquet), bundle) == ["u1", "u2"]
    bad = tmp_path / "bad.csv"
    bad.write_text("customer\nu1\n")
    with pytest.raises(RecsysError, match="no user_id column"):
        read_users(str(bad), bundle)
    with pytest.raises(RecsysError, match="does not exist"):
        read_users(str(tmp_path / "missing.txt"), bundle)
    with pytest.raises(RecsysError, match="out of range"):
        make_plan(trained_bundle["bundle"], "all", 500, 100)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "recsys", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ},
    )


def test_command_line_errors_are_one_line(trained_bundle: dict[str, Any], tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    bad_users = tmp_path / "bad.csv"
    bad_users.write_text("customer\nu1\n")
    cases = {
        "does not exist": ["batch-score", f"bundle={tmp_path / 'nope'}", f"out={tmp_path}/o"],
        "cannot write": ["batch-score", f"bundle={trained_bundle['bundle']}", f"out={blocker}/o"],
        "no user_id column": [
            "batch-score",
            f"bundle={trained_bundle['bundle']}",
            f"users={bad_users}",
            f"out={tmp_path}/o2",
        ],
        "is required": ["export-embeddings", f"bundle={trained_bundle['bundle']}"],
    }
    for needle, args in cases.items():
        done = cli(*args)
        assert done.returncode == 2, (args, done.stderr)
        errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, done.stderr
        assert needle in errors[0]
        assert "Traceback" not in done.stderr


def test_export_round_trip_reproduces_scores(
    trained_bundle: dict[str, Any], tmp_path: Path
) -> None:
    bundle = load_bundle(trained_bundle["bundle"])
    out = tmp_path / "export"
    manifest = export_embeddings(bundle, out)
    export = validate_export(out)
    assert manifest["normalised"]
    assert manifest["rows"]["users"] == bundle.known_histories.height
    book_ids, books = export.books()
    user_ids, users = export.users()
    assert books.shape == (bundle.state.books.size - 2, manifest["dim"])
    # The bundle's own scores for a few users, from their full known history.
    retriever = bundle.recommender(use_index=False)
    rows = [0, 5, 17]
    histories = dict(bundle.known_histories.iter_rows())
    matrix = bundle.history_matrix([histories[user_ids[r]] for r in rows])
    indices = np.array([bundle.state.users.encode_one(user_ids[r]) for r in rows])
    expected = retriever.score(indices, matrix)[:, 2:]  # drop the reserved pad/OOV columns
    got = users[rows] @ books.T / manifest["temperature"]
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert book_ids == bundle.state.books.ids.to_list()

    import faiss

    index = faiss.read_index(str(out / "books.faiss"))
    _, top = index.search(users[rows], 5)
    np.testing.assert_array_equal(top, np.argsort(-got, axis=1, kind="stable")[:, :5])

    with pytest.raises(RecsysError, match="not empty"):
        export_embeddings(bundle, out)
    # A consumer detects tampering and bad values.
    corrupt = tmp_path / "corrupt"
    export_embeddings(bundle, corrupt, npy=False, faiss_index=False)
    frame = pl.read_parquet(corrupt / "books.parquet")
    vectors = frame.get_column("vector").to_numpy().copy()
    vectors[3, 0] = np.nan
    frame.with_columns(
        vector=pl.Series(vectors, dtype=pl.Array(pl.Float32, vectors.shape[1]))
    ).write_parquet(corrupt / "books.parquet")
    with pytest.raises(RecsysError, match="checksum mismatch"):
        validate_export(corrupt)
    from recsys.checksums import sha256_file

    meta = json.loads((corrupt / "manifest.json").read_text())
    meta["files"]["books.parquet"]["sha256"] = sha256_file(corrupt / "books.parquet")
    (corrupt / "manifest.json").write_text(json.dumps(meta))
    with pytest.raises(RecsysError, match="NaN"):
        validate_export(corrupt)
