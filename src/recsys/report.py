"""Printing metric tables and writing JSON results (atomically)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


def metrics_table(
    rows: Mapping[str, Mapping[str, Any]], columns: Sequence[str] | None = None, title: str = ""
) -> Table:
    """A rich table: one row per model/run, one column per metric."""
    if columns is None:
        seen: dict[str, None] = {}
        for values in rows.values():
            seen.update(dict.fromkeys(values))
        columns = list(seen)
    table = Table(title=title or None)
    table.add_column("name", style="bold")
    for column in columns:
        table.add_column(column, justify="right")
    for name, values in rows.items():
        table.add_row(name, *(_fmt(values.get(column)) for column in columns))
    return table


def print_table(
    rows: Mapping[str, Mapping[str, Any]], columns: Sequence[str] | None = None, title: str = ""
) -> None:
    Console(width=200).print(metrics_table(rows, columns, title))


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.3g}"
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def write_json(path: str | Path, payload: Any) -> Path:
    """Write JSON via a temp file + rename, so readers never see half a file."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    with os.fdopen(fd, "w") as handle:
        json.dump(payload, handle, indent=2, default=str)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, target)
    return target
