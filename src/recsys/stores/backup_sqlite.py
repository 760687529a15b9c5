"""SQLite side of store backups: the online backup API, in both directions.

``sqlite3.Connection.backup`` with the default ``pages=-1`` copies every page in one step,
inside one read transaction on the source: the copy is the database as of one commit, while a
server in WAL mode keeps writing (WAL readers do not block writers). A stepwise copy would
restart whenever another connection writes, and might never finish under steady ingestion.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from contextlib import closing
from pathlib import Path

from recsys.errors import RecsysError


def sqlite_path(url: str) -> Path:
    """The file of a ``sqlite:///<path>`` URL (RecsysError for an in-memory database)."""
    path = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else ""
    if not path or path == ":memory:":
        raise RecsysError(
            f"store.url {url!r} names no SQLite file; use sqlite:///<path to the store file>"
        )
    return Path(path)


def dump(url: str, out: Path, tables: Iterable[str]) -> dict[str, int]:
    """Copy the live store at ``url`` into ``out`` (a self-contained file, rollback journal);
    returns the rows per table of the copy."""
    source = sqlite_path(url)
    if not source.is_file():
        raise RecsysError(f"no store at {source}: nothing to back up; set store.url to the store")
    try:
        with (
            closing(sqlite3.connect(source, timeout=10)) as src,
            closing(sqlite3.connect(out)) as dst,
        ):
            src.backup(dst)  # pages=-1: one step, one snapshot
            dst.execute("PRAGMA journal_mode=DELETE")  # the file alone is the whole database
            problems = dst.execute("PRAGMA quick_check").fetchall()
            if problems != [("ok",)]:
                raise RecsysError(f"the store at {source} fails SQLite's quick_check: {problems}")
            return _rows(dst, tables)
    except sqlite3.DatabaseError as exc:
        raise RecsysError(f"cannot back up {source}: {exc} (is it a recsys store?)") from None


def holdings(url: str, tables: Iterable[str]) -> dict[str, int]:
    """Rows per store table of the database at ``url`` ({} when the file does not exist)."""
    target = sqlite_path(url)
    if not target.exists():
        return {}
    try:
        with closing(sqlite3.connect(f"{target.resolve().as_uri()}?mode=ro", uri=True)) as conn:
            return _rows(conn, tables)
    except sqlite3.DatabaseError as exc:
        raise RecsysError(
            f"{target} is not a SQLite database ({exc}); restore into another store.url"
        ) from None


def load(backup: Path, url: str, tables: Iterable[str]) -> dict[str, int]:
    """Copy ``backup`` over the database at ``url``; returns the rows per table there.

    One write transaction on the target, through SQLite itself rather than a file rename: a
    reader sees the old store or the restored one, a crash leaves the old one, and a WAL file
    the old store left behind is never replayed onto the new pages.
    """
    target = sqlite_path(url)
    target.parent.mkdir(parents=True, exist_ok=True)
    source = f"{backup.resolve().as_uri()}?mode=ro&immutable=1"
    try:
        with (
            closing(sqlite3.connect(source, uri=True)) as src,
            closing(sqlite3.connect(target, timeout=10)) as dst,
        ):
            src.backup(dst)
            dst.execute("PRAGMA journal_mode=WAL")  # as the store runs
            return _rows(dst, tables)
    except sqlite3.DatabaseError as exc:
        raise RecsysError(f"cannot restore into {target}: {exc}") from None


def _rows(conn: sqlite3.Connection, tables: Iterable[str]) -> dict[str, int]:
    present = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
    # names come from the schema's metadata, never from input
    return {
        t: int(conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0])
        for t in tables
        if t in present
    }
