"""Write a TorchServe model archive (``.mar``) from a verified bundle (docs/torchserve.md).

The archive holds the bundle's files (``bundle/``, checksums verified again when TorchServe
loads it), ``recsys-export.json`` (the bundle version, the recsys version that wrote it) and a
one-line handler that imports :mod:`recsys.torchserve.handler`: TorchServe runs it in the
Python environment it was started from, which must have recsys installed. The archive's
``modelVersion`` is the bundle's version. Next to it: ``config.properties`` with every
TorchServe address on loopback.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from importlib.metadata import version as installed
from pathlib import Path
from typing import Any

from recsys.bundle.reader import Bundle, load_bundle
from recsys.errors import RecsysError
from recsys.torchserve.handler import BUNDLE_DIR

MODEL_NAME = "recsys"
EXPORT_INFO = "recsys-export.json"
HANDLER = "recsys_torchserve_handler.py"
HANDLER_TEXT = (
    '"""recsys archive handler: TorchServe calls recsys.torchserve.handler.handle."""\n\n'
    "from recsys.torchserve.handler import handle  # noqa: F401\n"
)
PORTS = {"inference": 8080, "management": 8081, "metrics": 8082}


def config_properties(model_store: Path, mar: str, ports: dict[str, int] = PORTS) -> str:
    """TorchServe's ``config.properties``: every address on 127.0.0.1, the archive loaded at
    start with one worker, no per-model pip installs (recsys comes from the environment)."""
    return "".join(
        [
            f"inference_address=http://127.0.0.1:{ports['inference']}\n",
            f"management_address=http://127.0.0.1:{ports['management']}\n",
            f"metrics_address=http://127.0.0.1:{ports['metrics']}\n",
            f"model_store={model_store}\n",
            f"load_models={MODEL_NAME}={mar}\n",
            "default_workers_per_model=1\n",
            "install_py_dep_per_model=false\n",
            "default_response_timeout=120\n",
        ]
    )


def command(name: str) -> str | None:
    """The console script ``name`` of this Python's environment, else the one on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def archiver() -> str:
    """The ``torch-model-archiver`` command (RecsysError naming the extra when missing)."""
    found = command("torch-model-archiver")
    if found is None:
        raise RecsysError(
            "torch-model-archiver is not installed: the TorchServe export needs the torchserve "
            "extra (pip install -e '.[torchserve]'; TorchServe itself needs Java 17)."
        )
    return found


def export(bundle_path: str | Path, out: str | Path) -> dict[str, Any]:
    """Verify the bundle and write ``<out>/recsys.mar`` and ``<out>/config.properties``;
    returns what was written (RecsysError with the fix when the bundle does not verify)."""
    bundle = load_bundle(bundle_path)  # BundleError (a RecsysError) when corrupt or unknown
    target = Path(out)
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="recsys-mar-") as tmp:
        staging = Path(tmp) / "extra"
        shutil.copytree(bundle.path, staging / BUNDLE_DIR)
        info = _info(bundle)
        (staging / EXPORT_INFO).write_text(json.dumps(info, indent=2))
        handler = Path(tmp) / HANDLER
        handler.write_text(HANDLER_TEXT)
        command = [
            archiver(),
            "--model-name", MODEL_NAME,
            "--version", bundle.version,
            "--handler", str(handler),
            "--extra-files", str(staging),
            "--export-path", str(target),
            "--force",
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RecsysError(f"torch-model-archiver failed: {done.stderr.strip()[-2000:]}")
    mar = target / f"{MODEL_NAME}.mar"
    check_archive(mar, bundle.version)
    (target / "config.properties").write_text(config_properties(target.resolve(), mar.name))
    return {**info, "archive": str(mar), "bytes": mar.stat().st_size}


def _info(bundle: Bundle) -> dict[str, Any]:
    return {
        "bundle_version": bundle.version,
        "bundle_name": bundle.path.parent.name,
        "recsys_version": installed("recsys"),
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "handler": "recsys.torchserve.handler:handle",
    }


def check_archive(mar: Path, bundle_version: str) -> dict[str, Any]:
    """The archive's manifest names the bundle version and the archive holds the bundle's
    manifest and the export record (RecsysError otherwise)."""
    with zipfile.ZipFile(mar) as archive:
        names = set(archive.namelist())
        manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))
        info = json.loads(archive.read(EXPORT_INFO)) if EXPORT_INFO in names else {}
    version = manifest.get("model", {}).get("modelVersion")
    if version != bundle_version or info.get("bundle_version") != bundle_version:
        raise RecsysError(f"{mar}: the archive names version {version!r}, not {bundle_version!r}")
    if f"{BUNDLE_DIR}/manifest.json" not in names:
        raise RecsysError(f"{mar}: the bundle's manifest is missing from the archive")
    return manifest
