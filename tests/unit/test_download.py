"""Downloads over real HTTP on loopback: checksums verified, offline explained."""

from __future__ import annotations

import hashlib
import http.server
import io
import threading
import zipfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from recsys.data.download import LOCK, RemoteFile, download
from recsys.errors import DataError


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "www"
    root.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    httpd.shutdown()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_download_verifies_and_pins(server: tuple[str, Path], tmp_path: Path) -> None:
    url, root = server
    (root / "a.txt").write_bytes(b"hello")
    (root / "b.txt").write_bytes(b"unpinned")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("inner/c.dat", b"zipped")
    (root / "z.zip").write_bytes(buf.getvalue())
    registry = {
        "toy": (
            RemoteFile("a.txt", f"{url}/a.txt", _sha(b"hello")),
            RemoteFile("b.txt", f"{url}/b.txt"),
            RemoteFile("z.zip", f"{url}/z.zip", None, (("c.dat", _sha(b"zipped")),)),
        )
    }
    dest = tmp_path / "dest"
    download("toy", dest, registry=registry)
    assert (dest / "a.txt").read_bytes() == b"hello"
    assert (dest / "c.dat").read_bytes() == b"zipped"
    assert _sha(b"unpinned") in (dest / LOCK).read_text()
    # A tampered local copy is caught on the next run (present files are verified).
    (dest / "b.txt").write_bytes(b"tampered")
    with pytest.raises(DataError, match="does not match"):
        download("toy", dest, registry=registry)


def test_bad_checksum_is_refused_and_not_installed(
    server: tuple[str, Path], tmp_path: Path
) -> None:
    url, root = server
    (root / "a.txt").write_bytes(b"changed upstream")
    registry = {"toy": (RemoteFile("a.txt", f"{url}/a.txt", _sha(b"hello")),)}
    with pytest.raises(DataError, match="does not match"):
        download("toy", tmp_path / "d", registry=registry)
    assert not (tmp_path / "d" / "a.txt").exists()


def test_offline_message(tmp_path: Path) -> None:
    registry = {"toy": (RemoteFile("a.txt", "http://127.0.0.1:9/a.txt", None),)}
    with pytest.raises(DataError, match=r"may be offline.*copy it to"):
        download("toy", tmp_path / "d", registry=registry, timeout=2)


def test_unknown_dataset(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown dataset"):
        download("nope", tmp_path)
