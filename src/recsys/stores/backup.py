"""Backups of the store: one file and its manifest, taken while serving, restored atomically.

``backup_store(url, path)`` writes ``path`` (SQLite: a copy made with the online backup API;
PostgreSQL: ``pg_dump --format=custom``) and ``path.json``, the manifest: rows per table at the
backup's point in time, sha256, size, created_at, the source (password hidden). Both are written
to a temp file and renamed; the manifest last, so a manifest always vouches for a whole file.

``restore_store(path, url)`` checks the manifest and the sha256 first, refuses a target that
holds data unless ``force``, restores in one transaction and checks the rows per table.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from recsys import __version__
from recsys.checksums import sha256_file
from recsys.errors import RecsysError
from recsys.report import write_json
from recsys.stores import backup_postgres, backup_sqlite
from recsys.stores.backup_postgres import redact
from recsys.stores.schema import metadata

FORMAT = "recsys-store-backup/1"
TABLES = tuple(metadata.tables)  # the store's tables (SQLite's search index comes with them)
REQUIRED = ("events", "settings")  # what makes a database a recsys store


@dataclass(frozen=True)
class BackupManifest:
    """What a backup file holds (written next to it as ``<file>.json``).

    Args:
        kind: ``sqlite`` or ``postgresql``; a backup restores into the same kind of store.
        file: the backup file's name (the manifest sits next to it).
        sha256: of the backup file.
        bytes: its size.
        created_at: when the backup was taken (UTC, ISO 8601).
        source: the store's URL, password hidden.
        recsys_version: the version that wrote it (a restored store is migrated on open).
        tables: rows per table, as of the backup's one point in time.
        format: the manifest format.
    """

    kind: str
    file: str
    sha256: str
    bytes: int
    created_at: str
    source: str
    recsys_version: str
    tables: dict[str, int]
    format: str = FORMAT

    def summary(self) -> str:
        """One line: rows per table, size, checksum prefix."""
        rows = ", ".join(f"{n} {t}" for t, n in self.tables.items())
        return f"{self.kind}: {rows}; {self.bytes / 1e6:.2f} MB, sha256 {self.sha256[:12]}"


def manifest_path(path: Path) -> Path:
    """The manifest of the backup file ``path``: ``<path>.json``."""
    return path.with_name(path.name + ".json")


def backup_store(url: str, path: Path, pg_bin: Path | None = None) -> BackupManifest:
    """Back up the store at ``url`` into ``path`` (and its manifest), consistently while a
    server keeps writing.

    Args:
        url: the store's SQLAlchemy URL (``sqlite:///…`` or ``postgresql+psycopg://…``).
        path: the backup file to write (replaced if it exists; parents are created).
        pg_bin: the folder of ``pg_dump`` (default: PATH, then /usr/lib/postgresql/*/bin).

    Raises:
        RecsysError: no store at ``url``, unreachable, not a recsys store, or pg_dump failed.
    """
    kind = store_kind(url)
    if path.is_dir():
        raise RecsysError(f"backup.path {path} is a folder; name the file to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if kind == "sqlite":
            tables = backup_sqlite.dump(url, tmp, TABLES)
        else:
            tables = backup_postgres.dump(url, tmp, TABLES, pg_bin)
        missing = [t for t in REQUIRED if t not in tables]
        if missing:
            raise RecsysError(f"{redact(url)} is not a recsys store (no table {missing[0]})")
        tmp.chmod(0o600)  # personal data: the owner alone reads it (as the manifest)
        _fsync(tmp)
        manifest = BackupManifest(
            kind=kind,
            file=path.name,
            sha256=sha256_file(tmp),
            bytes=tmp.stat().st_size,
            created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            source=redact(url),
            recsys_version=__version__,
            tables=tables,
        )
        manifest_path(path).unlink(missing_ok=True)  # an older manifest never vouches for it
        os.replace(tmp, path)
        write_json(manifest_path(path), asdict(manifest))
        _fsync(path.parent)
    finally:
        tmp.unlink(missing_ok=True)
    return manifest


def verify_backup(path: Path) -> BackupManifest:
    """The manifest of the backup file ``path``, once its sha256 matches.

    Raises:
        RecsysError: no such file, no manifest, or the file is not the one the manifest names.
    """
    if path.name.endswith(".json") and path.with_name(path.name[:-5]).is_file():
        raise RecsysError(f"{path} is a manifest; name the backup file {path.name[:-5]}")
    if not path.is_file():
        raise RecsysError(
            f"no backup at {path}; set backup.path to a file from recsys store backup"
        )
    manifest = _read_manifest(path)
    digest = sha256_file(path)
    if digest != manifest.sha256 or path.stat().st_size != manifest.bytes:
        raise RecsysError(
            f"{path} is corrupt: sha256 {digest[:12]}…, {path.stat().st_size} bytes, where its "
            f"manifest says {manifest.sha256[:12]}…, {manifest.bytes} bytes; nothing was "
            "restored: restore another backup"
        )
    return manifest


def restore_store(
    path: Path, url: str, force: bool = False, pg_bin: Path | None = None
) -> BackupManifest:
    """Restore the backup file ``path`` into the store at ``url``, atomically.

    Args:
        path: a file written by :func:`backup_store` (its manifest next to it).
        url: the target store; created if it does not exist (SQLite) or must exist (PostgreSQL:
            the database).
        force: replace a target that holds data (by default it is refused).
        pg_bin: the folder of ``pg_restore`` (default: PATH, then /usr/lib/postgresql/*/bin).

    Raises:
        RecsysError: corrupt or foreign file, another kind of store, a target holding data
            without ``force``, unreachable, or the restored rows differ from the manifest.
    """
    manifest = verify_backup(path)
    kind = store_kind(url)
    if manifest.kind != kind:
        raise RecsysError(
            f"{path} is a {manifest.kind} backup and store.url is a {kind} store; restore it "
            f"into a {manifest.kind} store.url"
        )
    if kind == "sqlite":
        held = backup_sqlite.holdings(url, TABLES)
    else:
        held = backup_postgres.holdings(url, TABLES)
    data = {t: n for t, n in held.items() if n and t != "settings"}  # a new store has a salt
    if data and not force:
        rows = ", ".join(f"{n} {t}" for t, n in data.items())
        raise RecsysError(
            f"the store at {redact(url)} holds data ({rows}); a restore replaces all of it: "
            "add force=true to replace it, or set store.url to an empty store"
        )
    if kind == "sqlite":
        restored = backup_sqlite.load(path, url, TABLES)
    else:
        restored = backup_postgres.load(path, url, TABLES, pg_bin)
    differs = {t: (n, restored.get(t)) for t, n in manifest.tables.items() if restored.get(t) != n}
    if differs:
        raise RecsysError(f"the restored store differs from the manifest (rows: {differs})")
    return manifest


def store_kind(url: str) -> str:
    """``sqlite`` or ``postgresql``, from a store URL."""
    if url.startswith("sqlite"):
        return "sqlite"
    if url.startswith("postgresql"):
        return "postgresql"
    raise RecsysError(
        f"store.url {redact(url)!r}: backups support sqlite:///… and postgresql+psycopg://…"
    )


def _read_manifest(path: Path) -> BackupManifest:
    found = manifest_path(path)
    if not found.is_file():
        raise RecsysError(
            f"{path} has no manifest {found.name} next to it: it is not a file written by "
            "recsys store backup, or its manifest was not copied with it (copy both)"
        )
    try:
        raw: dict[str, Any] = json.loads(found.read_text())
        if raw.get("format") != FORMAT:
            raise ValueError(f"format {raw.get('format')!r}, expected {FORMAT!r}")
        return BackupManifest(**raw)
    except (ValueError, TypeError) as exc:
        raise RecsysError(f"{found} is not a recsys store backup manifest ({exc})") from None


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
