"""PostgreSQL side of store backups: ``pg_dump --format=custom`` and ``pg_restore``.

The dump reads one snapshot. This module exports it from a REPEATABLE READ transaction, counts
the rows in that transaction and hands the snapshot to ``pg_dump --snapshot``, so the counts in
the manifest are those of the dump, however many events arrive meanwhile.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from recsys.errors import RecsysError

TOOL_TIMEOUT_S = 3600


def pg_tool(name: str, pg_bin: Path | None) -> Path:
    """``pg_dump`` or ``pg_restore``: from ``pg_bin`` when given, else from PATH, else from the
    newest ``/usr/lib/postgresql/<version>/bin`` (Debian and Ubuntu keep them there)."""
    if pg_bin is not None:
        tool = Path(pg_bin) / name
        if not tool.is_file():
            raise RecsysError(
                f"no {name} in {pg_bin}; set backup.pg_bin to the folder that holds {name} "
                "(e.g. /usr/lib/postgresql/16/bin)"
            )
        return tool
    found = shutil.which(name)
    if found:
        return Path(found)
    versions = glob.glob(f"/usr/lib/postgresql/*/bin/{name}")
    if versions:
        return Path(max(versions, key=lambda p: _version(Path(p).parts[-3])))
    raise RecsysError(
        f"{name} is not installed; install the PostgreSQL client tools (e.g. "
        f"`apt-get install postgresql-client`) or set backup.pg_bin to the folder holding {name}"
    )


def dump(url: str, out: Path, tables: Iterable[str], pg_bin: Path | None) -> dict[str, int]:
    """``pg_dump`` of the database at ``url`` into ``out``; returns the rows per table in the
    dumped snapshot."""
    tool = pg_tool("pg_dump", pg_bin)
    with _connection(url) as conn:
        conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            snapshot = conn.exec_driver_sql("SELECT pg_export_snapshot()").scalar()
            rows = _rows(conn, tables)
            # the transaction stays open while pg_dump reads: the snapshot lives as long as it
            _run(tool, url, "--format=custom", f"--snapshot={snapshot}", f"--file={out}")
    return rows


def holdings(url: str, tables: Iterable[str]) -> dict[str, int]:
    """Rows per store table of the database at ``url`` (tables it lacks are left out)."""
    with _connection(url) as conn:
        return _rows(conn, tables)


def load(backup: Path, url: str, tables: Iterable[str], pg_bin: Path | None) -> dict[str, int]:
    """``pg_restore`` of ``backup`` into the database at ``url``, in one transaction (objects in
    the dump are dropped first); returns the rows per table there."""
    tool = pg_tool("pg_restore", pg_bin)
    flags = ["--clean", "--if-exists", "--no-owner", "--no-acl", "--single-transaction"]
    _run(tool, url, *flags, "--exit-on-error", str(backup))
    return holdings(url, tables)


def redact(url: str) -> str:
    """``url`` without its password (for messages and manifests)."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return url


@contextmanager
def _connection(url: str) -> Iterator[Connection]:
    try:
        engine = sa.create_engine(url, connect_args={"connect_timeout": 5})
    except (sa.exc.ArgumentError, ModuleNotFoundError) as exc:
        raise RecsysError(f"bad store.url {redact(url)!r}: {exc}") from None
    try:
        with engine.connect() as conn:
            yield conn
    except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise RecsysError(
            f"cannot reach the store at {redact(url)}: {reason}; check store.url and that the "
            "database server is running"
        ) from None
    finally:
        engine.dispose()


def _rows(conn: Connection, tables: Iterable[str]) -> dict[str, int]:
    present = set(sa.inspect(conn).get_table_names())
    # names come from the schema's metadata, never from input
    return {
        t: int(conn.exec_driver_sql(f'SELECT count(*) FROM "{t}"').scalar() or 0)
        for t in tables
        if t in present
    }


def _run(tool: Path, url: str, *args: str) -> None:
    """Run a client tool against ``url``; the password goes through the environment, never
    the command line (where ``ps`` shows it)."""
    parsed = sa.engine.make_url(url)
    dbname = parsed.set(drivername="postgresql", password=None)
    env = {**os.environ, "PGCONNECT_TIMEOUT": "5"}
    if parsed.password:
        env["PGPASSWORD"] = str(parsed.password)
    command = [str(tool), "--no-password", f"--dbname={dbname.render_as_string()}", *args]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, env=env, timeout=TOOL_TIMEOUT_S, check=False
        )
    except OSError as exc:
        raise RecsysError(f"cannot run {tool}: {exc}; set backup.pg_bin") from None
    if done.returncode != 0:
        error = " ".join(done.stderr.strip().splitlines()[-3:])
        hint = ""
        if "version mismatch" in done.stderr:
            hint = "; set backup.pg_bin to the bin folder of a PostgreSQL at least as new"
        raise RecsysError(f"{tool.name} failed (exit {done.returncode}): {error}{hint}")


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".") if p.isdigit())
