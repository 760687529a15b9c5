"""The TorchServe export (issue #24) against a real TorchServe on loopback: the archive answers
with the in-process service's lists (same books in the same order, reasons, scores), for known
and unknown readers and for a history; bad requests are 4xx; the archive names the bundle's
version; a corrupt bundle is refused at export with a message. Skips with the reason when
TorchServe (the torchserve extra) or Java is missing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from recsys.bundle.reader import load_bundle
from recsys.errors import RecsysError
from recsys.serving.core import shape_answer
from recsys.serving.local import free_port
from recsys.serving.service import RecommendationService

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent
TORCHSERVE = shutil.which("torchserve", path=str(BIN)) or shutil.which("torchserve")
if TORCHSERVE is None:
    pytest.skip("TorchServe is not installed (the torchserve extra)", allow_module_level=True)
if shutil.which("java") is None:
    pytest.skip("Java is not installed (make install adds openjdk-17)", allow_module_level=True)

from recsys.torchserve.archive import check_archive, export  # noqa: E402
from recsys.torchserve.server import running  # noqa: E402


@pytest.fixture(scope="module")
def exported(trained_bundle: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Any:
    out = tmp_path_factory.mktemp("mar")
    return out, export(trained_bundle["bundle"], out)


@pytest.fixture(scope="module")
def served(exported: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real TorchServe with the archive, every address on loopback, token auth off (here
    only)."""
    out, _ = exported
    ports = {"inference": free_port(), "management": free_port(), "metrics": free_port()}
    with running(out, tmp_path_factory.mktemp("torchserve"), ports) as base:
        yield base


def _same(served: dict[str, Any], local: dict[str, Any]) -> None:
    ours, theirs = served["recommendations"], local["recommendations"]
    assert [r["book_id"] for r in ours] == [r["book_id"] for r in theirs]
    assert [r["reasoning"] for r in ours] == [r["reasoning"] for r in theirs]
    for a, b in zip(ours, theirs, strict=True):
        assert a["confidence_score"] == pytest.approx(b["confidence_score"], abs=1e-6)
    for key in ("source", "fallback_reason", "bundle_version"):
        assert served["metadata"][key] == local["metadata"][key]


def test_the_archive_answers_with_the_service_lists(
    served: str, trained_bundle: dict[str, Any]
) -> None:
    bundle = load_bundle(trained_bundle["bundle"])
    service = RecommendationService(bundle, 10.0)
    users = [str(u) for u in bundle.known_histories["user_id"].head(12).to_list()]
    personal = 0
    for user in [*users, "nobody-known"]:
        answer = httpx.post(f"{served}/predictions/recsys", json={"user_id": user, "limit": 10})
        assert answer.status_code == 200, answer.text
        local = shape_answer(service, service.for_user(user, 10, [], None), 0.0, "-")
        _same(answer.json(), local.model_dump(mode="json"))
        personal += answer.json()["metadata"]["source"] == "personalized"
    assert personal == len(users)  # and the unknown reader got popularity, as served
    history = [str(b) for b in bundle.books["book_id"].head(5).to_list()]
    filters = {"year_min": 1900}
    body = {"history": history, "limit": 7, "filters": filters}
    answer = httpx.post(f"{served}/predictions/recsys", json=body)
    assert answer.status_code == 200, answer.text
    from recsys.serving.schemas import Filters

    hybrid = service.hybrid(None, history, [], 7, Filters.model_validate(filters))
    _same(answer.json(), shape_answer(service, hybrid, 0.0, "-").model_dump(mode="json"))


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({}, 422, "either user_id or history"),
        ({"user_id": "u1", "history": ["b1"]}, 422, "either user_id or history"),
        ({"user_id": "u1", "limit": 0}, 422, "limit"),
        ({"user_id": "u1", "colour": "red"}, 422, "colour"),
        ("not json", 400, "not JSON"),
    ],
)
def test_bad_requests_are_4xx_with_a_message(
    served: str, body: Any, status: int, says: str
) -> None:
    if isinstance(body, str):
        answer = httpx.post(
            f"{served}/predictions/recsys", content=body, headers={"content-type": "text/plain"}
        )
    else:
        answer = httpx.post(f"{served}/predictions/recsys", json=body)
    assert answer.status_code == status, answer.text
    assert says in answer.text


def test_the_archive_names_the_bundle_version(
    exported: Any, trained_bundle: dict[str, Any]
) -> None:
    out, written = exported
    version = load_bundle(trained_bundle["bundle"]).version
    assert written["bundle_version"] == version
    manifest = check_archive(out / "recsys.mar", version)
    assert manifest["model"]["modelName"] == "recsys"
    properties = (out / "config.properties").read_text()
    addresses = [line for line in properties.splitlines() if "_address=" in line]
    assert len(addresses) == 3
    assert all("//127.0.0.1:" in line for line in addresses)


def test_a_corrupt_bundle_is_refused_at_export(
    trained_bundle: dict[str, Any], tmp_path: Path
) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(load_bundle(trained_bundle["bundle"]).path, copy)
    victim = next(p for p in sorted(copy.rglob("*.parquet")))
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(RecsysError, match="checksum"):
        export(copy, tmp_path / "out")
    assert not (tmp_path / "out" / "recsys.mar").exists()
    done = subprocess.run(
        [sys.executable, "-m", "recsys", "export-torchserve", f"bundle={copy}", f"out={copy}.o"],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "RECSYS_ROOT": str(tmp_path)},
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "checksum" in done.stderr
    assert "Traceback" not in done.stderr


def test_an_incompatible_bundle_is_refused_at_export(
    trained_bundle: dict[str, Any], tmp_path: Path
) -> None:
    """A bundle written by another manifest schema (another recsys) is refused, naming the fix."""
    import json

    copy = tmp_path / "bundle"
    shutil.copytree(load_bundle(trained_bundle["bundle"]).path, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["manifest_schema"] = 999
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RecsysError, match=r"manifest_schema 999.*rebuild the bundle"):
        export(copy, tmp_path / "out")
    assert not (tmp_path / "out" / "recsys.mar").exists()
