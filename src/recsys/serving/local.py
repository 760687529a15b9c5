"""Run the app on loopback: under uvicorn in this process (demo, tests), or as a `recsys serve`
subprocess (benchmarks, restart tests)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from fastapi import FastAPI


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serve_in_thread(app: FastAPI, timeout_s: float = 60.0) -> Iterator[str]:
    """Start ``app`` on a free loopback port, yield its base URL, stop it on exit."""
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", proxy_headers=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    if not server.started:
        server.should_exit = True
        raise RuntimeError("the HTTP server did not start (see the log above)")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def spawn_server(
    overrides: list[str], env: dict[str, str] | None = None, timeout_s: float = 180.0
) -> tuple[subprocess.Popen[bytes], str]:
    """Run `recsys serve <overrides>` in a subprocess on a free loopback port and wait until
    ``/readyz`` answers; returns the process and its base URL. The caller stops it
    (``terminate()``: SIGTERM, which also shuts a Ray runner down)."""
    import httpx

    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "recsys", "serve", f"port={port}", *overrides],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return process, base
        except httpx.HTTPError:
            pass
        if process.poll() is not None:
            raise RuntimeError(f"`recsys serve` exited with {process.returncode}")
        time.sleep(0.1)
    process.terminate()
    raise RuntimeError(f"`recsys serve` not ready after {timeout_s:.0f} s")
