"""A real PostgreSQL server on loopback (initdb in a temporary folder) that tests can stop and
start again on the same port; skips, with the reason, where it cannot run."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest


def _pg_bin() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(candidates[-1]).parent if candidates else None


class PostgresServer:
    """``start()``, ``stop(mode)`` and ``start()`` again: same data, same port, same URL."""

    def __init__(self) -> None:
        pytest.importorskip("psycopg", reason="the postgres extra (psycopg) is not installed")
        bin_dir = _pg_bin()
        if bin_dir is None:
            pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
        self.bin = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="recsys-pg-"))
        self.data, self.sockets = self.root / "data", self.root / "sock"
        self.sockets.mkdir()
        self.as_user: list[str] = []
        if os.getuid() == 0:  # initdb refuses root: run the server as the postgres user
            if shutil.which("runuser") is None:
                pytest.skip("running as root without runuser: cannot start PostgreSQL")
            self.as_user = ["runuser", "-u", "postgres", "--"]
            shutil.chown(self.root, "postgres")
            shutil.chown(self.sockets, "postgres")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        init = self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust")
        if init.returncode != 0:
            pytest.skip(f"initdb failed: {init.stderr.strip()[:200]}")

    def _run(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.as_user, str(self.bin / tool), *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1 -c fsync=off"
        # -l: the server must not inherit our pipes (capturing them would wait forever)
        log = str(self.root / "server.log")
        started = self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", log, "-w", "start")
        if started.returncode != 0:
            pytest.skip(f"pg_ctl start failed: {started.stderr.strip()[:200]}")

    def stop(self, mode: str = "fast") -> None:
        """``fast`` (clean) or ``immediate`` (like a crash: no shutdown checkpoint)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "stop")

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
