"""`recsys models list | show | register | promote | rollback | prune`: the model registry
(``registry.url``). Each prints a table; an error is one line and exit status 2."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from omegaconf import DictConfig

from recsys.errors import RecsysError
from recsys.lifecycle import ModelVersion, Registry
from recsys.report import print_table


def main(cfg: DictConfig) -> Any:
    from recsys.lifecycle import open_registry

    if not cfg.registry.url:
        raise RecsysError("registry.url is empty; name the registry (registry.url=…)")
    registry = open_registry(str(cfg.registry.url))
    try:
        return COMMANDS[str(cfg.command)](registry, cfg)
    finally:
        registry.close()


def list_versions(registry: Registry, cfg: DictConfig) -> dict[str, Any]:
    names = [str(cfg.family)] if cfg.family else registry.families()
    if not names:
        print("the registry holds no versions yet (`recsys models register bundle=…`)")
    metrics, deleted = list(cfg.metrics), bool(cfg.deleted)
    return {name: print_family(registry, name, metrics, deleted) for name in names}


def show(registry: Registry, cfg: DictConfig) -> dict[str, Any]:
    found = registry.get(family_of(registry, cfg), str(cfg.version))
    fields = {k: v for k, v in found.__dict__.items() if k not in ("metrics", "reasons")}
    fields.update(created_at=when(found.created_at), promoted_at=when(found.promoted_at))
    fields["reasons"] = "; ".join(found.reasons) or None
    fields.update({f"metric {k}": v for k, v in sorted(found.metrics.items())})
    title = f"{found.family} {found.version}"
    print_table({k: {"value": v} for k, v in fields.items()}, title=title)
    events = registry.history(found.family, found.version)
    rows = {
        f"{i + 1}": {"at": when(e["at"]), "event": e["event"], "actor": e["actor"], **e["details"]}
        for i, e in enumerate(events)
    }
    print_table(rows, title="history")
    return {"version": found.__dict__, "history": events}


def register(registry: Registry, cfg: DictConfig) -> dict[str, Any]:
    reasons = [str(cfg.reason)] if cfg.reason else []
    done = registry.register(str(cfg.bundle), str(cfg.stage), None, reasons, str(cfg.actor))
    print(f"registered {done.family} {done.version} ({done.stage})")
    return print_family(registry, done.family)


def promote(registry: Registry, cfg: DictConfig) -> dict[str, Any]:
    family = family_of(registry, cfg)
    before = registry.production(family)
    done = registry.promote(family, str(cfg.version), str(cfg.actor), str(cfg.reason))
    print(f"{family}: {done.version} is production (was {before.version if before else '-'})")
    return print_family(registry, family)


def rollback(registry: Registry, cfg: DictConfig) -> dict[str, Any]:
    family = family_of(registry, cfg)
    before = registry.production(family)
    done = registry.rollback(family, str(cfg.actor), str(cfg.reason))
    print(f"{family}: rolled back to {done.version} (was {before.version if before else '-'})")
    return print_family(registry, family)


def prune(registry: Registry, cfg: DictConfig) -> dict[str, Any]:
    family, keep, in_use = family_of(registry, cfg), int(cfg.keep), [str(v) for v in cfg.in_use]
    if cfg.dry_run:
        gone = registry.prunable(family, keep, in_use)
    else:
        gone = registry.prune(family, keep, in_use, str(cfg.actor))
    verb = "would delete" if cfg.dry_run else "deleted"
    rows = {v.version: {"stage": v.stage, "path": v.path} for v in gone}
    if rows:
        print_table(rows, title=f"{family}: {verb} {len(rows)} version(s), keep={keep}")
    else:
        print(f"{family}: nothing to prune (keep={keep})")
    return rows


COMMANDS: dict[str, Callable[[Registry, DictConfig], Any]] = {
    "list": list_versions,
    "show": show,
    "register": register,
    "promote": promote,
    "rollback": rollback,
    "prune": prune,
}


def family_of(registry: Registry, cfg: DictConfig) -> str:
    """``family=``, else the family holding ``version=``, else the registry's only family."""
    if cfg.get("family"):
        return str(cfg.family)
    if cfg.get("version"):
        holders = sorted({v.family for v in registry.find(str(cfg.version))})
        if len(holders) == 1:
            return holders[0]
        if not holders:
            raise RecsysError(
                f"no family holds version {cfg.version!r}: `recsys models list` lists them."
            )
        raise RecsysError(f"version {cfg.version} is in {holders}: name one with family=…")
    names = registry.families()
    if len(names) != 1:
        held = f"it holds {names}" if names else "it is empty"
        raise RecsysError(f"name the family (family=…): {held}.")
    return names[0]


def print_family(
    registry: Registry, family: str, metrics: list[str] | None = None, deleted: bool = False
) -> dict[str, Any]:
    """The family's versions as a table (newest first); returns the rows."""
    shown = metrics or ["recall@20", "ndcg@20"]
    rows = {v.version: row(v, shown) for v in registry.versions(family, deleted)}
    current = registry.production(family)
    print_table(rows, title=f"{family}: production {current.version if current else '-'}")
    return rows


def row(version: ModelVersion, metrics: list[str]) -> dict[str, Any]:
    return {
        "stage": version.stage,
        "created": when(version.created_at),
        "promoted": when(version.promoted_at),
        "actor": version.actor or None,
        "parent": version.parent,
        "data": version.data_fingerprint[:12],
        **{m: version.metrics.get(m) for m in metrics},
        "reasons": "; ".join(version.reasons) or None,
    }


def when(epoch: float | None) -> str | None:
    """Epoch seconds as UTC ``YYYY-MM-DD HH:MM:SS``."""
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S")
