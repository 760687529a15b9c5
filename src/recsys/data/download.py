"""Fetch public datasets from their published URLs, verifying sha256 checksums.

Checksums are those of the published files (for the archives: of the files inside). A file
whose checksum is not known in advance is pinned on first download in ``checksums.lock.json``
next to the data and verified on every later download.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from recsys.checksums import sha256_file
from recsys.errors import DataError

log = logging.getLogger(__name__)

KGAT = "https://raw.githubusercontent.com/xiangwang1223/knowledge_graph_attention_network/master/Data/amazon-book"
GOODBOOKS = "https://raw.githubusercontent.com/zygmuntz/goodbooks-10k/master"
CASEREC = (
    "https://github.com/caserec/Datasets-for-Recommender-Systems/raw/master/"
    "Processed%20Datasets/BookCrossing/book_crossing.zip"
)


@dataclass(frozen=True)
class RemoteFile:
    """One published file; ``members`` lists (name, sha256) inside a zip archive."""

    name: str
    url: str
    sha256: str | None = None
    members: tuple[tuple[str, str | None], ...] = ()


DATASETS: dict[str, tuple[RemoteFile, ...]] = {
    "amazon_book": (
        RemoteFile(
            "train.txt",
            f"{KGAT}/train.txt",
            "4d10106bb06a77e11df660429903c0067aeb85b86431807836b0d8b7edc30c38",
        ),
        RemoteFile(
            "item_list.txt",
            f"{KGAT}/item_list.txt",
            "efea8518cd68e515584fdfbfca95f318b25ef551c64498c5935897c2b02e436f",
        ),
        RemoteFile(
            "user_list.txt",
            f"{KGAT}/user_list.txt",
            "ae2e001d4e49fd82d4c7e25f950827a8be2fbd5c6f3a16dacb2d104edb32310e",
        ),
    ),
    "goodbooks": (
        RemoteFile(
            "books.csv",
            f"{GOODBOOKS}/books.csv",
            "4d21d0e0433128657c752e3a3d0405ac0ec11675d6c70c64cb0abf4ab1acb76a",
        ),
        RemoteFile(
            "tags.csv",
            f"{GOODBOOKS}/tags.csv",
            "87f316957564fa21c316a4f50afc87f07906f478f990eec027aaca00c536c449",
        ),
        RemoteFile("ratings.csv", f"{GOODBOOKS}/ratings.csv"),
        RemoteFile("to_read.csv", f"{GOODBOOKS}/to_read.csv"),
        RemoteFile("book_tags.csv", f"{GOODBOOKS}/book_tags.csv"),
    ),
    "book_crossing": (
        RemoteFile(
            "book_crossing.zip",
            CASEREC,
            None,
            (
                (
                    "book_history.dat",
                    "9866c79c6022bd68729403768496c7ffb8f481db268884e0a22e5cf80fc5eadd",
                ),
                (
                    "book_ratings.dat",
                    "703c6efadfee9bd790354b230fe948c61f246ba5e3642c67ace96501de6667b3",
                ),
                (
                    "items_info.dat",
                    "e8785b6744d6758b41ed497a5849a66ab2e17279b71e67d0a43b1e0687a39df1",
                ),
                (
                    "users_info.dat",
                    "95f6ba8786e13c99bf879ffbdebe6615016931f1ccba1a2ff9b7555dcd0492d3",
                ),
            ),
        ),
    ),
}
LOCK = "checksums.lock.json"


def _fetch(url: str, dest: Path, timeout: float) -> None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, dest.open("wb") as out:
            shutil.copyfileobj(response, out)
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DataError(
            f"cannot download {url} ({reason}). This machine may be offline: download the file "
            f"on a connected machine, copy it to {dest.parent}, and run this command again "
            "(present files are verified, not downloaded), or use data=synthetic."
        ) from None


def _verify(path: Path, name: str, expected: str | None, lock: dict[str, str]) -> None:
    actual = sha256_file(path)
    pinned = expected or lock.get(name)
    if pinned is None:
        lock[name] = actual
        log.warning("%s: no published checksum; pinned %s in %s", name, actual, LOCK)
    elif actual != pinned:
        raise DataError(
            f"{name}: sha256 {actual} does not match the expected {pinned}. The download is "
            "corrupt or the source changed; delete the file and download again."
        )


def download(
    dataset: str,
    dest: str | Path,
    timeout: float = 60.0,
    registry: dict[str, tuple[RemoteFile, ...]] | None = None,
) -> Path:
    """Download (or verify already present) files of ``dataset`` into ``dest``."""
    files = (registry or DATASETS).get(dataset)
    if files is None:
        raise DataError(
            f"unknown dataset '{dataset}'; choose one of {sorted(registry or DATASETS)}."
        )
    folder = Path(dest)
    folder.mkdir(parents=True, exist_ok=True)
    lock_path = folder / LOCK
    lock: dict[str, str] = json.loads(lock_path.read_text()) if lock_path.is_file() else {}
    for remote in files:
        targets = [name for name, _ in remote.members] or [remote.name]
        if all((folder / t).is_file() for t in targets):
            log.info("%s present, verifying", ", ".join(targets))
        else:
            with tempfile.TemporaryDirectory(dir=folder) as tmp:
                part = Path(tmp) / remote.name
                log.info("downloading %s", remote.url)
                _fetch(remote.url, part, timeout)
                _verify(part, remote.name, remote.sha256, lock)
                if remote.members:
                    with zipfile.ZipFile(part) as archive:
                        for name, _ in remote.members:
                            member = next((m for m in archive.namelist() if m.endswith(name)), None)
                            if member is None:
                                raise DataError(f"{remote.url}: archive has no {name}.")
                            (Path(tmp) / name).write_bytes(archive.read(member))
                            (Path(tmp) / name).replace(folder / name)
                else:
                    part.replace(folder / remote.name)
        for name, expected in remote.members or ((remote.name, remote.sha256),):
            _verify(folder / name, name, expected, lock)
    lock_path.write_text(json.dumps(lock, indent=2, sort_keys=True))
    return folder
