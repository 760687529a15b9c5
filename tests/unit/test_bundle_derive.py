"""``derive``: a new bundle version from an old one, parts replaced or dropped, source untouched."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsys.bundle import layout
from recsys.bundle.derive import derive
from recsys.bundle.manifest import Manifest
from recsys.bundle.reader import SCORE_FN, load_bundle, verify
from recsys.bundle.writer import Writer, write_bundle


def _source(root: Path) -> Path:
    manifest = Manifest(
        bundle_name="tiny",
        bundle_version="20260101T000000.000-abcdef0",
        created_at="2026-01-01T00:00:00+00:00",
        git_sha="abcdef0",
        git_dirty=False,
        versions={},
        data_fingerprint="data",
        embedding_dim=4,
        score_fn=SCORE_FN,
        temperature=0.1,
        vocab_sizes={},
        metrics={"recall@20": 0.5, "two_stage/recall@20": 0.6},
        data_cutoff=1_700_000_000.0,
        config_hash="trained-with",
    )

    def text(name: str, body: str) -> Writer:
        return lambda folder: (folder / name).write_text(body)

    parts = {
        layout.TOWERS: text("user_tower.json", "towers v1"),
        layout.RANKER: text("ranker.json", "ranker v1"),
        layout.MF: text(layout.MF_META, "mf v1"),
        layout.INDEX: text("index_spec.json", "index v1"),
    }
    return write_bundle(root, manifest, parts, promote=True)


def test_derive_replaces_and_drops_parts_and_leaves_the_source(tmp_path: Path) -> None:
    source = load_bundle(_source(tmp_path))
    before = {p: p.read_bytes() for p in source.path.rglob("*") if p.is_file()}

    path = derive(
        source,
        {layout.RANKER: lambda folder: (folder / "ranker.json").write_text("ranker v2")},
        drop=layout.RANKING_PARTS,
        metrics={"recall@20": 0.5, "two_stage/recall@20": 0.7},
    )

    after = load_bundle(tmp_path / "tiny")  # LATEST names the new version, checksums hold
    assert after.path == path
    assert after.version != source.version
    assert after.manifest.parent_version == source.version
    assert after.manifest.metrics["two_stage/recall@20"] == 0.7
    # the same data, but a part made with another config: retraining must not skip it
    assert after.manifest.data_cutoff == source.manifest.data_cutoff == 1_700_000_000.0
    assert source.manifest.config_hash == "trained-with"
    assert after.manifest.config_hash is None
    assert (path / layout.RANKER / "ranker.json").read_text() == "ranker v2"
    assert not (path / layout.MF).exists()  # dropped, not written again
    for part, name in ((layout.TOWERS, "user_tower.json"), (layout.INDEX, "index_spec.json")):
        assert (path / part / name).read_bytes() == (source.path / part / name).read_bytes()
    assert {p: p.read_bytes() for p in source.path.rglob("*") if p.is_file()} == before
    assert verify(source.path).files == source.manifest.files


def test_derive_with_a_replaced_part_keeps_every_other_part(tmp_path: Path) -> None:
    source = load_bundle(_source(tmp_path))
    path = derive(
        source,
        {layout.INDEX: lambda folder: (folder / "index_spec.json").write_text("index v2")},
        promote=False,
        index_spec={"factory": "HNSW32"},
    )
    derived = load_bundle(path)
    assert sorted(p.name for p in path.iterdir() if p.is_dir()) == sorted(
        p.name for p in source.path.iterdir() if p.is_dir()
    )
    assert derived.manifest.index_spec == {"factory": "HNSW32"}
    assert derived.manifest.metrics == source.manifest.metrics
    assert (path / layout.INDEX / "index_spec.json").read_text() == "index v2"
    assert load_bundle(tmp_path / "tiny").version == source.version  # not promoted


def test_derive_refuses_unknown_manifest_fields(tmp_path: Path) -> None:
    source = load_bundle(_source(tmp_path))
    with pytest.raises(TypeError):
        derive(source, {}, no_such_field=1)
