"""Running jobs as commands: Hydra with clean user errors, composing configs for programmatic
runs, and the config nodes every job reads the same way (prepared data, time budgets).

Jobs (:mod:`recsys.jobs`) are leaves that never import each other; what they share lives here
(the command layer, next to :mod:`recsys.cli`) or in the library.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import hydra
import polars as pl
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from recsys.data.prepared import PreparedData, prepare
from recsys.data.split import FIT_ALL, fit_mode, fitting_all
from recsys.errors import RecsysError
from recsys.stores import Stores

log = logging.getLogger(__name__)


def register_settings() -> None:
    """Register the typed serving defaults with Hydra's ConfigStore (``serve_schema``: every
    serving default but auth; ``auth/schema``), so the ``serve`` and ``auth`` configs are
    composed on top of :mod:`recsys.serving.settings` and name only path-derived values."""
    from hydra.core.config_store import ConfigStore

    from recsys.serving.settings import AuthSettings, ServeSettings

    store = ConfigStore.instance()
    defaults = ServeSettings.defaults()
    defaults.pop("auth")  # the auth group: shared with `recsys token`
    serve = OmegaConf.create(defaults)
    # a map the user fills: `'rate_limits.endpoints={/events: 6000/minute}'` adds keys
    OmegaConf.set_struct(serve.rate_limits.endpoints, False)
    store.store(name="serve_schema", node=serve)
    store.store(group="auth", name="schema", node=AuthSettings().model_dump(mode="json"))


register_settings()  # before any config is composed, by any entry point


def config_dir() -> Path:
    """The repository's ``configs/`` folder (override with RECSYS_CONFIG_DIR)."""
    import os

    env = os.environ.get("RECSYS_CONFIG_DIR")
    if env:
        return Path(env).resolve()
    return Path(__file__).resolve().parents[2] / "configs"


def user_error(exc: BaseException) -> RecsysError | None:
    """The RecsysError behind an exception (Hydra wraps errors raised in instantiate)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, RecsysError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def guarded(fn: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """Print user errors as one line and exit 2, instead of a traceback."""

    def task(cfg: DictConfig) -> Any:
        _redact_saved_config()
        try:
            return fn(cfg)
        except MissingMandatoryValue as exc:
            key = getattr(exc, "full_key", "") or str(exc)
            print(
                f"error: the config value '{key}' is required; set it on the command line, "
                f"e.g. `{key}=...`",
                file=sys.stderr,
            )
            sys.exit(2)
        except (RecsysError, InstantiationException) as exc:
            err = user_error(exc)
            if err is None:
                raise
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)

    task.__name__ = fn.__name__
    task.__module__ = fn.__module__
    return task


def _redact_saved_config() -> None:
    """Mask secrets in what Hydra saved under ``.hydra/`` before the job starts."""
    from hydra.core.hydra_config import HydraConfig

    from recsys.redact import redact_saved_config

    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    output_dir = OmegaConf.select(
        cast(DictConfig, hydra_cfg), "runtime.output_dir", throw_on_missing=False
    )
    if output_dir and hydra_cfg.output_subdir is not None:  # composed configs (tests): none
        redact_saved_config(Path(output_dir) / hydra_cfg.output_subdir)


def run(config_name: str, fn: Callable[[DictConfig], Any], argv: list[str]) -> None:
    """Run ``fn`` under ``hydra.main`` with the given command-line overrides."""
    sys.argv = [sys.argv[0], *argv]
    main = hydra.main(config_path=str(config_dir()), config_name=config_name, version_base="1.3")
    main(guarded(fn))()


def compose_config(
    name: str, overrides: list[str] | None = None, root: Path | None = None
) -> DictConfig:
    """Compose a config as the CLI would, for programmatic runs (tests, benchmarks).

    With ``root``, every path (data, artifacts, outputs) lives under it.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    extra = [f"paths.root_dir={root}", f"paths.output_dir={root}/out"] if root else []
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose(name, overrides=[*extra, *(overrides or [])], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    if root is None:
        with open_dict(cfg):
            cfg.paths.output_dir = cfg.hydra.run.dir
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def max_time(minutes: float) -> str:
    """A training time budget as Lightning's ``DD:HH:MM:SS``."""
    seconds = int(minutes * 60)
    return f"00:{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _source_config(cfg: DictConfig) -> dict[str, Any]:
    data = OmegaConf.to_container(cfg.data.reader, resolve=True)
    split = OmegaConf.to_container(cfg.split, resolve=True)
    source = {"reader": data, "split": split, "fit": fit_mode(cfg.get("fit"))}
    if cfg.data.get("buckets"):  # streamed: random_holdout draws per bucket
        source["buckets"] = int(cfg.data.buckets)
    return source


def _split_fn(cfg: DictConfig) -> Callable[[pl.DataFrame], Any]:
    split_fn = hydra.utils.instantiate(cfg.split)
    return fitting_all(split_fn) if fit_mode(cfg.get("fit")) == FIT_ALL else split_fn


def prepare_streamed(cfg: DictConfig) -> dict[str, Any]:
    """``data.buckets=K`` with ``data=custom``: prepare the interactions file without holding
    it in memory (:mod:`recsys.data.streaming`); returns the summary (nothing is loaded)."""
    from recsys.data.io import read_table
    from recsys.data.streaming import prepare_streaming, scan_interactions

    reader = cfg.data.reader
    if reader.get("_target_") != "recsys.data.io.read_custom":
        raise RecsysError(
            "data.buckets streams the files of data=custom (data.reader.interactions=<file>); "
            f"{cfg.data.name} is read in memory: leave data.buckets unset."
        )
    args = OmegaConf.to_container(reader, resolve=True)
    assert isinstance(args, dict)
    books = (
        read_table(args["books"], args.get("book_columns"), "books") if args.get("books") else None
    )
    users = (
        read_table(args["users"], args.get("user_columns"), "users") if args.get("users") else None
    )
    store = _erasure_store(cfg)
    try:
        return prepare_streaming(
            str(args.get("name") or cfg.data.name),
            scan_interactions(args["interactions"], args.get("interaction_columns")),
            _split_fn(cfg),
            cfg.data.processed_dir,
            int(cfg.data.buckets),
            books,
            users,
            erased=lambda ids: list(store.users.deleted_filter(ids.to_list())),
            extra={"source_config": _source_config(cfg)},
            source=str(args["interactions"]),
        )
    finally:
        store.close()


def load_or_prepare(cfg: DictConfig, force: bool = False) -> PreparedData:
    """Load ``cfg.data.processed_dir`` if it was prepared from the same config, else prepare it."""
    folder = Path(cfg.data.processed_dir)
    source = _source_config(cfg)
    store = _erasure_store(cfg)
    if not force and (folder / "summary.json").is_file():
        data = PreparedData.load(folder)
        erased = _erased(store, data.train, data.val, data.test, data.users)
        if data.summary.get("source_config") == source and not erased:
            log.info("using prepared data in %s", folder)
            store.close()
            return data
        if erased:
            log.info("prepared data in %s holds %d erased user(s); preparing again", folder, erased)
        else:
            log.info("prepared data in %s came from another config; preparing again", folder)
    if cfg.data.get("buckets"):
        store.close()
        prepare_streamed(cfg)
        return PreparedData.load(folder)
    dataset = hydra.utils.instantiate(cfg.data.reader)
    # GDPR: erased users never reach training data again (none where there is no store)
    deleted = store.users.deleted_filter(dataset.interactions.get_column("user_id").unique())
    store.close()
    if deleted:
        users = dataset.users
        if "user_id" in users.columns:
            users = users.filter(~pl.col("user_id").is_in(deleted))
        dataset = dataclasses.replace(
            dataset,
            interactions=dataset.interactions.filter(~pl.col("user_id").is_in(deleted)),
            users=users,
        )
        log.info("dropped %d erased user(s) from %s", len(deleted), dataset.name)
    data = prepare(dataset, _split_fn(cfg))
    data.summary["source_config"] = source
    data.save(folder)
    log.info("prepared %s into %s", data.name, folder)
    return data


def _erasure_store(cfg: DictConfig) -> Stores:
    """The serving store, for its erasures (the null set, with none, where there is no store
    file yet or no ``paths``); batch jobs never create one."""
    from recsys.stores import open_store

    return open_store(cfg.paths.get("store_url") if "paths" in cfg else None, create=False)


def _erased(store: Stores, *frames: pl.DataFrame) -> int:
    users = pl.concat([f.select("user_id") for f in frames]).get_column("user_id").unique()
    return len(store.users.deleted_filter(users.to_list()))


def optimized_metric(metrics: dict[str, float], name: str | None) -> float | None:
    """The value of the metric a sweep optimises (``optimized_metric`` in the config).

    Raises:
        RecsysError: ``name`` is not among ``metrics``.
    """
    if not name:
        return None
    if name.startswith("test/"):
        raise RecsysError(
            f"optimized_metric '{name}' is a test-carve figure, which no choice may use; "
            "optimise a validation metric (e.g. optimized_metric=two_stage/recall@20)."
        )
    if name not in metrics:
        raise RecsysError(
            f"optimized_metric '{name}' is not a metric of this run; choose one of "
            f"{sorted(metrics)} (e.g. optimized_metric=recall@20)."
        )
    return float(metrics[name])
