"""`recsys retrain`: base data + stored events -> a candidate bundle, judged against production
on the same recent holdout by the gate, registered (docs/training.md#retraining)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import polars as pl
from omegaconf import DictConfig, OmegaConf

from recsys.bundle.reader import Bundle, load_bundle
from recsys.data import schema as S
from recsys.data.io import Dataset
from recsys.data.prepared import PreparedData, data_cutoff, fingerprint, prepare
from recsys.data.split import FIT_ALL, fit_mode, fitting_all, without_test_carve
from recsys.errors import BundleError
from recsys.lifecycle import Registry, open_registry
from recsys.lifecycle.compare import HoldoutScore, score_bundle
from recsys.lifecycle.gate import GateRules, judge
from recsys.lifecycle.holdout import Holdout, HoldoutSettings, carve_holdout
from recsys.lifecycle.lock import exclusive
from recsys.lifecycle.retrain import (
    RetrainData,
    print_report,
    production_cutoff,
    register_outcome,
    unchanged,
    with_stored_events,
)
from recsys.report import write_json
from recsys.runner import load_or_prepare
from recsys.stores import open_store
from recsys.training.config import config_hash, run_training


def main(cfg: DictConfig) -> dict[str, Any]:
    """One retrain, under the lock: a second run at the same time exits 2 naming this one."""
    rules = gate_rules(cfg)
    rules.check(cfg.eval.ks)  # a misnamed metric fails now, not after training
    with exclusive(str(cfg.lock)):
        L.seed_everything(cfg.seed, workers=True)
        registry = open_registry(str(cfg.registry.url))
        try:
            return retrain(cfg, registry, rules)
        finally:
            registry.close()


def gate_rules(cfg: DictConfig) -> GateRules:
    """``cfg.gate`` as typed rules; a rule set to null is off (``'gate.floors={coverage@20:
    null}'``)."""
    gate = cfg.gate

    def rules(node: DictConfig | None) -> dict[str, float]:
        return {str(k): float(v) for k, v in (node or {}).items() if v is not None}

    return GateRules(
        relative=rules(gate.relative),
        floors=rules(gate.floors),
        max_p99_ms=None if gate.max_p99_ms is None else float(gate.max_p99_ms),
        verify=bool(gate.verify),
    )


def retrain(cfg: DictConfig, registry: Registry, rules: GateRules) -> dict[str, Any]:
    """Data -> holdout -> (nothing changed: stop) -> the whole bundle -> :func:`decide`."""
    started = time.perf_counter()
    production = production_bundle(cfg, registry)
    data = gather(cfg, production)
    settings = HoldoutSettings(**OmegaConf.to_container(cfg.holdout))  # type: ignore[arg-type]
    seen = None if production is None else seen_pairs(production)
    remaining, holdout = carve_holdout(data.dataset.interactions, seen, settings)
    prepared = prepare_candidate(cfg, data, remaining)
    facts = {"data": data.facts(), "holdout": holdout.spec}
    same_as = production.manifest if production is not None and not cfg.force else None
    if same_as and unchanged(same_as, data, prepared.summary["data_fingerprint"], config_hash(cfg)):
        print(
            f"nothing to retrain: no event since production {same_as.bundle_version}'s "
            "cut-off, and the same data and config; force=true retrains anyway"
        )
        return {"skipped": True, "production": same_as.bundle_version, **facts}
    trained_at = time.perf_counter()
    run = run_training(cfg, prepared, production.version if production is not None else None)
    run.report(prepared.name)
    seconds = {"prepare": trained_at - started, "train": time.perf_counter() - trained_at}
    result = decide(cfg, registry, rules, run.bundle, production, holdout)
    seconds["total"] = time.perf_counter() - started
    result.update(facts, seconds=seconds)
    write_json(Path(cfg.paths.output_dir) / "retrain.json", result)
    print(f"report written to {cfg.paths.output_dir}/retrain.json ({seconds['total']:.0f} s)")
    return result


def production_bundle(cfg: DictConfig, registry: Registry) -> Bundle | None:
    """``production=<path>`` when given, else the registry's production of the family."""
    if cfg.production:
        return load_bundle(str(cfg.production))
    found = registry.production(str(cfg.bundle.name))
    return None if found is None else load_bundle(found.path)


def gather(cfg: DictConfig, production: Bundle | None) -> RetrainData:
    """The base dataset (prepared as every job prepares it) plus the stored events."""
    base = load_or_prepare(cfg).dataset()
    cutoff = None if production is None else production_cutoff(production.manifest)
    stores = open_store(cfg.paths.store_url, cfg.history_types, create=False)
    try:
        return with_stored_events(base, stores, cutoff)
    finally:
        stores.close()


def seen_pairs(bundle: Bundle) -> pl.DataFrame:
    """``(user_id, book_id)`` pairs ``bundle`` trained on (its training carve)."""
    return bundle.histories.explode("history").rename({"history": S.BOOK_ID}).drop_nulls()


def prepare_candidate(cfg: DictConfig, data: RetrainData, remaining: pl.DataFrame) -> PreparedData:
    """Split what the holdout left, as the experiment splits but without a test carve (the
    retrain's holdout is its report, and those rows train the candidate); the data
    fingerprint and cut-off name all the data read (holdout included), so the same store
    gives the same fingerprint."""
    everything = data.dataset
    dataset = Dataset(
        everything.name, remaining, everything.books, everything.users, marks=everything.marks
    )
    split_fn = hydra.utils.instantiate(cfg.split, **without_test_carve(cfg.split))
    if fit_mode(cfg.get("fit")) == FIT_ALL:
        split_fn = fitting_all(split_fn)
    prepared = prepare(dataset, split_fn)
    split = prepared.summary["split"]
    prepared.summary["data_fingerprint"] = fingerprint(everything.interactions, split)
    prepared.summary["data_cutoff"] = data_cutoff(everything.interactions)
    return prepared


def decide(
    cfg: DictConfig,
    registry: Registry,
    rules: GateRules,
    path: Path,
    production: Bundle | None,
    holdout: Holdout,
) -> dict[str, Any]:
    """Score both bundles on the holdout, apply the gate, print the report, register."""
    ks, users, seed = list(cfg.eval.ks), int(cfg.gate.latency_users), int(cfg.seed)
    candidate, error = None, None
    try:
        candidate = load_bundle(path)
    except BundleError as exc:
        error = str(exc)
    scores: dict[str, HoldoutScore | None] = {
        "candidate": score_bundle(candidate, holdout, ks, users, seed) if candidate else None,
        "production": score_bundle(production, holdout, ks, users, seed) if production else None,
    }
    gate = judge(rules, scores["candidate"], scores["production"], error)
    print_report(scores["candidate"], scores["production"], gate, 20 if 20 in ks else ks[0])
    registered = None
    scored = scores["candidate"]
    if scored is not None:  # the registry keeps only bundles that verify
        metrics = {f"holdout/{k}": v for k, v in scored.metrics.items()}
        registered = register_outcome(registry, path, gate, metrics, bool(cfg.promote_if_gated))
        print(f"registered {registered['family']} {registered['version']}: {registered['stage']}")
    else:
        print(f"not registered: {path} does not verify ({error})")
    return {
        "skipped": False,
        "bundle": str(path),
        "gate": gate.as_dict(),
        **{name: s.row() if s else None for name, s in scores.items()},
        "registry": registered,
    }
