"""Batch scoring: top-K books for many users, written as a Parquet dataset.

The answers come from the online service's own personalised path
(:meth:`RecommendationService.score_users`): same histories (every known interaction),
same two stages, same exclusions, same popularity top-up. Only the batching differs.

Output folder ``out/``::

    part-00000.parquet ...   user_id, rank, book_id, score, source, bundle_version
    unknown_users.txt        requested ids the bundle does not know (not scored)
    _run.json                what this run is (bundle, k, users, chunking): resume guard
    manifest.json            written last: rows, users, parts and their sha256

Parts are written under a temporary name and renamed, so a visible part is always complete;
a re-run of the same job skips the parts that exist. ``manifest.json`` marks a finished job.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from recsys.bundle.reader import Bundle, load_bundle
from recsys.checksums import sha256_file
from recsys.errors import RecsysError
from recsys.serving.live import Live
from recsys.serving.service import RecommendationService
from recsys.stores import open_store

SCHEMA = {
    "user_id": pl.String,
    "rank": pl.Int32,
    "book_id": pl.String,
    "score": pl.Float32,
    "source": pl.String,
    "bundle_version": pl.String,
}
MAX_K = 200


def read_users(spec: str, bundle: Bundle) -> list[str]:
    """``all`` (every user the bundle knows), or a file: ``.txt`` with one id per line, or a
    CSV/TSV/Parquet with a ``user_id`` column. Ids are the dataset's own; duplicates are
    dropped (first occurrence kept)."""
    if spec == "all":
        return [str(u) for u in bundle.known_histories.get_column("user_id").to_list()]
    path = Path(spec)
    if not path.is_file():
        raise RecsysError(
            f"users file {path} does not exist: give users=all or a .txt/.csv/.parquet file."
        )
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            frame = pl.read_parquet(path)
        elif suffix in (".csv", ".tsv"):
            frame = pl.read_csv(
                path, separator="\t" if suffix == ".tsv" else ",", infer_schema=False
            )
        else:
            lines = path.read_text(encoding="utf-8").splitlines()
            frame = pl.DataFrame({"user_id": [line.strip() for line in lines]})
    except (OSError, UnicodeDecodeError, pl.exceptions.PolarsError) as exc:
        raise RecsysError(f"cannot read users file {path}: {exc}") from None
    if "user_id" not in frame.columns:
        raise RecsysError(
            f"users file {path} has no user_id column (columns: {frame.columns}); "
            "rename the id column to user_id, or use a .txt file with one id per line."
        )
    ids = frame.get_column("user_id").cast(pl.String).drop_nulls().str.strip_chars()
    users = list(dict.fromkeys(u for u in ids.to_list() if u))
    if not users:
        raise RecsysError(f"users file {path} lists no user ids.")
    return users


class BatchScorer:
    """Top-``k`` lists for users of one bundle, through the online service's path."""

    def __init__(
        self, bundle: Bundle, k: int, batch_size: int = 256, store_url: str | None = None
    ) -> None:
        if not 1 <= k <= MAX_K:
            raise RecsysError(f"k={k} is out of range: use 1 <= k <= {MAX_K}.")
        self.bundle, self.k, self.batch_size = bundle, k, batch_size
        live = Live(stores=open_store(store_url))
        self.service = RecommendationService(bundle, stage_timeout_s=float("inf"), live=live)

    def close(self) -> None:
        self.service.close()
        self.service.live.close()

    def score(self, users: list[str]) -> pl.DataFrame:
        """Rows ``SCHEMA`` for users the bundle knows (see :func:`make_plan`)."""
        ids: list[str] = []
        ranks: list[int] = []
        books: list[str | None] = []
        scores: list[float] = []
        sources: list[str] = []
        catalogue = self.service.catalogue.ids
        for start in range(0, len(users), self.batch_size):
            chunk = users[start : start + self.batch_size]
            for user, answer in self.service.score_users(chunk, self.k):
                n = len(answer.books)
                ids += [user] * n
                ranks += range(1, n + 1)
                books += [catalogue[b] for b in answer.books]
                scores += answer.scores
                # The source of each row: the model's list, or the popularity top-up.
                model = n if answer.from_model is None else answer.from_model
                sources += [answer.source] * model + ["popularity"] * (n - model)
        return pl.DataFrame(
            {
                "user_id": ids,
                "rank": ranks,
                "book_id": books,
                "score": scores,
                "source": sources,
                "bundle_version": [self.bundle.version] * len(ids),
            },
            schema=SCHEMA,
        )


@dataclass
class Plan:
    """The chunks of one batch-scoring job."""

    bundle: str
    version: str
    k: int
    chunk_size: int
    users: list[str]
    unknown: list[str]
    store_url: str | None = None
    deleted: int = 0  # requested ids of erased users (never written anywhere)

    @property
    def chunks(self) -> list[list[str]]:
        size = self.chunk_size
        return [self.users[i : i + size] for i in range(0, len(self.users), size)]

    def identity(self) -> dict[str, Any]:
        digest = hashlib.sha256("\n".join(self.users).encode()).hexdigest()
        return {
            "bundle_version": self.version,
            "k": self.k,
            "chunk_size": self.chunk_size,
            "users": len(self.users),
            "users_sha256": digest,
        }


def part_path(out: Path, chunk: int) -> Path:
    return out / f"part-{chunk:05d}.parquet"


def write_atomic(frame: pl.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    frame.write_parquet(tmp)
    os.replace(tmp, path)


def score_chunk(scorer: BatchScorer, out: Path, chunk: int, users: list[str]) -> int:
    """Score one chunk and write its part; returns the number of rows."""
    frame = scorer.score(users)
    write_atomic(frame, part_path(out, chunk))
    return frame.height


def prepare_out(out: Path, plan: Plan) -> list[int]:
    """Create ``out`` (or check it belongs to this job); return the chunks still to do."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".probe-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise RecsysError(
            f"cannot write to out={out}: {exc.strerror}; choose a writable folder."
        ) from None
    identity = plan.identity()
    run_file = out / "_run.json"
    if run_file.is_file():
        previous = json.loads(run_file.read_text())
        if previous != identity:
            changed = sorted(k for k in identity if previous.get(k) != identity[k])
            raise RecsysError(
                f"out={out} holds results of a different job ({', '.join(changed)} differ); "
                "use another out= or delete that folder."
            )
    else:
        run_file.write_text(json.dumps(identity, indent=2))
    (out / "manifest.json").unlink(missing_ok=True)  # unfinished until written again
    return [i for i in range(len(plan.chunks)) if not part_path(out, i).is_file()]


def finish(out: Path, plan: Plan, seconds: float, executor: str) -> dict[str, Any]:
    """Write ``unknown_users.txt`` and ``manifest.json``; return the manifest."""
    (out / "unknown_users.txt").write_text("".join(f"{u}\n" for u in plan.unknown))
    parts = sorted(out.glob("part-*.parquet"))
    rows = sum(pl.scan_parquet(p).select(pl.len()).collect().item() for p in parts)
    manifest = {
        **plan.identity(),
        "bundle": plan.bundle,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "executor": executor,
        "seconds": round(seconds, 2),
        "users_scored": len(plan.users),
        "unknown_users": len(plan.unknown),
        "erased_users_skipped": plan.deleted,
        "events_store": plan.store_url is not None,
        "rows": rows,
        "schema": {name: str(dtype) for name, dtype in SCHEMA.items()},
        "files": {p.name: {"sha256": sha256_file(p)} for p in parts},
    }
    tmp = out / ".manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, out / "manifest.json")
    return manifest


def make_plan(
    bundle_path: str, users_spec: str, k: int, chunk_size: int, store_url: str | None = None
) -> Plan:
    """Who to score. With a store, users known only from events count as known, and erased
    users are left out (counted, never listed)."""
    bundle = load_bundle(bundle_path)
    if chunk_size < 1:
        raise RecsysError(f"chunk_size={chunk_size} must be at least 1.")
    if not 1 <= k <= MAX_K:
        raise RecsysError(f"k={k} is out of range: use 1 <= k <= {MAX_K}.")
    stores = open_store(store_url, create=False)
    event_users = list(stores.events.event_histories())
    requested = read_users(users_spec, bundle)
    if users_spec == "all":
        requested = list(dict.fromkeys([*requested, *event_users]))
    known_ids = {str(u) for u in bundle.known_histories.get_column("user_id").to_list()}
    known_ids |= set(event_users)
    deleted = stores.users.deleted_filter(requested)
    users = [u for u in requested if u in known_ids and u not in deleted]
    unknown = [u for u in requested if u not in known_ids and u not in deleted]
    stores.close()
    url = stores.url
    return Plan(str(bundle.path), bundle.version, k, chunk_size, users, unknown, url, len(deleted))


def run_local(
    plan: Plan, out: Path, todo: list[int], progress: Callable[[int], None]
) -> Iterator[int]:
    """Score the chunks ``todo`` in this process; yields rows per chunk."""
    scorer = BatchScorer(load_bundle(plan.bundle), plan.k, store_url=plan.store_url)
    try:
        chunks = plan.chunks
        for chunk in todo:
            rows = score_chunk(scorer, out, chunk, chunks[chunk])
            progress(len(chunks[chunk]))
            yield rows
    finally:
        scorer.close()


class _ChunkWorker:
    """A Ray Data actor: loads the bundle once, scores and writes whole chunks."""

    def __init__(self, bundle: str, k: int, out: str, store_url: str | None) -> None:
        self.scorer = BatchScorer(load_bundle(bundle), k, store_url=store_url)
        self.out = Path(out)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        rows = [
            score_chunk(self.scorer, self.out, int(chunk), [str(u) for u in users])
            for chunk, users in zip(batch["chunk"], batch["users"], strict=True)
        ]
        return {
            "chunk": np.asarray(batch["chunk"]),
            "rows": np.asarray(rows),
            "users": np.asarray([len(u) for u in batch["users"]]),
        }


def run_ray(
    plan: Plan,
    out: Path,
    todo: list[int],
    progress: Callable[[int], None],
    address: str | None = None,
    workers: int = 2,
) -> Iterator[int]:
    """The same chunks on Ray Data: ``workers`` actors, each with the bundle loaded once.

    ``address``: an existing cluster (``auto``, ``ray://…``); default starts a local one.
    On a multi-node cluster ``out`` must be storage every node can write (a shared mount).
    """
    import ray

    from recsys.serving.ray_runner import ray_env

    ray_env()
    started_here = not ray.is_initialized()
    if started_here:
        kwargs: dict[str, Any] = {"log_to_driver": False, "configure_logging": False}
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(include_dashboard=False, **kwargs)
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        chunks = plan.chunks
        items = [{"chunk": i, "users": chunks[i]} for i in todo]
        dataset = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
        results = dataset.map_batches(
            _ChunkWorker,
            fn_constructor_kwargs={
                "bundle": plan.bundle,
                "k": plan.k,
                "out": str(out),
                "store_url": plan.store_url,
            },
            batch_size=1,
            batch_format="numpy",
            concurrency=max(1, min(workers, len(items))),
            num_cpus=1,
        )
        for batch in results.iter_batches(batch_size=1, batch_format="numpy"):
            progress(int(batch["users"][0]))
            yield int(batch["rows"][0])
    finally:
        if started_here:
            ray.shutdown()
