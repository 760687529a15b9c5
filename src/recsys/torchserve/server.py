"""A TorchServe process on loopback with a recsys archive, for tests and benchmarks.

TorchServe's ``--start`` forks Java, which inherits stdout: capturing it would hang, so its
output goes to files (``LOG_LOCATION``) and the caller waits on the prediction endpoint.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from recsys.errors import RecsysError
from recsys.torchserve.archive import MODEL_NAME, command, config_properties


def torchserve() -> str:
    """The ``torchserve`` command of this environment (RecsysError naming the extra)."""
    found = command("torchserve")
    if found is None or shutil.which("java") is None:
        raise RecsysError(
            "TorchServe needs the torchserve extra (pip install -e '.[torchserve]') and Java 17 "
            "(Debian: openjdk-17-jre-headless)."
        )
    return found


@contextmanager
def running(
    model_store: Path, workdir: Path, ports: dict[str, int], timeout_s: float = 180.0
) -> Iterator[str]:
    """TorchServe serving ``model_store``'s ``recsys.mar`` on loopback ``ports``, token
    authentication off (loopback tests and benchmarks only); yields the inference address
    once a prediction answers, stops TorchServe after."""
    command = torchserve()
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "config.properties"
    config.write_text(config_properties(model_store.resolve(), f"{MODEL_NAME}.mar", ports))
    logs = workdir / "logs"
    env = {**os.environ, "LOG_LOCATION": str(logs), "METRICS_LOCATION": str(logs)}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"  # workers' Python
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "cwd": workdir}
    start = [command, "--start", "--ncs", "--model-store", str(model_store)]
    start += ["--ts-config", str(config), "--disable-token-auth"]
    subprocess.run(start, env=env, check=True, timeout=60, **quiet)  # type: ignore[call-overload]
    base = f"http://127.0.0.1:{ports['inference']}"
    try:
        deadline = time.monotonic() + timeout_s
        while not _answers(base):
            if time.monotonic() > deadline:
                tail = "\n".join(p.read_text()[-3000:] for p in sorted(logs.glob("*.log")))
                raise RecsysError(f"TorchServe did not answer within {timeout_s:.0f} s:\n{tail}")
            time.sleep(1)
        yield base
    finally:
        subprocess.run([command, "--stop"], env=env, timeout=60, check=False, **quiet)  # type: ignore[call-overload]


def _answers(base: str) -> bool:
    try:
        probe = httpx.post(f"{base}/predictions/{MODEL_NAME}", json={"history": ["-"]}, timeout=30)
    except httpx.TransportError:
        return False
    return probe.status_code == 200
