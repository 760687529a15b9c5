"""`recsys batch-score`: top-K books for every requested user, to a Parquet dataset."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

from recsys.errors import RecsysError
from recsys.report import print_table


def main(cfg: DictConfig) -> dict[str, Any]:
    from recsys.offline import batch

    if cfg.executor not in ("local", "ray"):
        raise RecsysError(f"unknown executor '{cfg.executor}': use executor=local or executor=ray.")
    if not cfg.out:
        raise RecsysError("give an output folder: out=<folder>.")
    plan = batch.make_plan(
        str(cfg.bundle), str(cfg.users), int(cfg.k), int(cfg.chunk_size), cfg.get("store_url")
    )
    out = Path(str(cfg.out))
    todo = batch.prepare_out(out, plan)
    done = len(plan.chunks) - len(todo)
    print(
        f"batch-score {plan.version}: {len(plan.users)} users in {len(plan.chunks)} chunks "
        f"({done} already done), k={plan.k}, executor={cfg.executor}"
    )
    if plan.deleted:
        print(f"{plan.deleted} erased user(s) skipped")
    if plan.unknown:
        print(f"{len(plan.unknown)} unknown user id(s) not scored; listed in unknown_users.txt")
    started = time.perf_counter()
    columns = [*Progress.get_default_columns()[:1], BarColumn(), MofNCompleteColumn()]
    with Progress(*columns, TimeRemainingColumn(), disable=not cfg.progress) as bar:
        task = bar.add_task("users", total=len(plan.users))
        bar.advance(
            task, sum(len(plan.chunks[i]) for i in range(len(plan.chunks)) if i not in todo)
        )

        def advance(n: int) -> None:
            bar.advance(task, n)

        if cfg.executor == "ray":
            runs = batch.run_ray(plan, out, todo, advance, cfg.ray.address, int(cfg.ray.workers))
        else:
            runs = batch.run_local(plan, out, todo, advance)
        for _ in runs:
            pass
    seconds = time.perf_counter() - started
    manifest = batch.finish(out, plan, seconds, str(cfg.executor))
    scored = sum(len(plan.chunks[i]) for i in todo)
    print_table(
        {
            "batch-score": {
                "users": len(plan.users),
                "scored now": scored,
                "unknown": len(plan.unknown),
                "rows": manifest["rows"],
                "seconds": round(seconds, 1),
                "users/s": round(scored / seconds, 1) if seconds > 0 else 0.0,
            }
        }
    )
    print(f"written {out}/ (manifest.json, {len(manifest['files'])} part(s))")
    return manifest
