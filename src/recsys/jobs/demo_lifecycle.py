"""`recsys demo lifecycle`: the model lifecycle end to end on the synthetic default.

A server (the local runner) follows the registry's production version; readers send events
over HTTP; `recsys retrain` (a subprocess, as a scheduler runs it) builds a candidate from the
base data and those events, scores it and production on the same recent holdout, and promotes
it when the gate passes; the server swaps to it, and its answers name the new bundle version.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from typing import Any

import httpx
from omegaconf import DictConfig

from recsys.bundle.reader import load_bundle
from recsys.errors import RecsysError
from recsys.lifecycle import ModelVersion, Registry, open_registry
from recsys.serving.app import create_app
from recsys.serving.live import Live
from recsys.serving.local import serve_in_thread
from recsys.serving.service import RecommendationService


def main(cfg: DictConfig) -> dict[str, Any]:
    registry = open_registry(str(cfg.registry.url))
    try:
        production = production_of(registry, str(cfg.bundle))
        live = Live.from_config(
            {
                "store": {"url": str(cfg.store_url)},
                "auth": {"enabled": False},
                "cache": {"enabled": False},
                "registry": {"url": str(cfg.registry.url), "poll_s": float(cfg.poll_s)},
            }
        )
        bundle = load_bundle(production.path)
        app = create_app(lambda: RecommendationService(bundle, 10.0, live=live))
        with serve_in_thread(app) as base:
            user = str(bundle.known_histories.item(0, "user_id"))
            before = version_served(base, user)
            print(f"\nserving {before} (production in the registry at {cfg.registry.url})")
            sent = send_events(base, bundle, int(cfg.readers), int(cfg.events_per_reader),
                               int(cfg.seed))  # fmt: skip
            print(f"{sent} events stored over HTTP; retraining on them (recsys retrain)\n")
            run_retrain(cfg)
            now = registry.production(production.family)
            assert now is not None
            if now.version == production.version:
                print(f"\nthe candidate was not promoted: {latest_reasons(registry, production)}")
                return {"before": before, "after": before, "promoted": False}
            after = wait_for(base, user, now.version, float(cfg.timeout_s))
            print(f"\npromoted {now.version}; the server now answers with {after} (was {before})")
            return {"before": before, "after": after, "promoted": True}
    finally:
        registry.close()


def production_of(registry: Registry, bundle: str) -> ModelVersion:
    """The family's production version; the demo bundle is registered as production when the
    registry has none."""
    loaded = load_bundle(bundle)
    family = loaded.manifest.bundle_name
    return registry.production(family) or registry.register(
        loaded.path, stage="production", actor="demo", reasons=["the demo's first bundle"]
    )


def send_events(base: str, bundle: Any, readers: int, per_reader: int, seed: int) -> int:
    """Each reader reads books they have not read (POST /events); returns events stored."""
    rng = random.Random(seed)
    books = [str(b) for b in bundle.books.get_column("book_id").to_list()]
    stored = 0
    with httpx.Client(base_url=base, timeout=30) as client:
        for user, history in bundle.known_histories.head(readers).iter_rows():
            unread = [b for b in rng.sample(books, 40) if b not in set(history)]
            events = [{"user_id": str(user), "book_id": b, "type": "read"}
                      for b in unread[:per_reader]]  # fmt: skip
            response = client.post("/events", json={"events": events})
            response.raise_for_status()
            stored += int(response.json()["stored"])
    return stored


def run_retrain(cfg: DictConfig) -> None:
    """`recsys retrain` with the demo's store and registry, promoting a gated candidate."""
    args = [
        sys.executable, "-m", "recsys", "retrain", "promote_if_gated=true",
        f"paths.store_url={cfg.store_url}", f"registry.url={cfg.registry.url}",
        *[str(a) for a in cfg.retrain],
    ]  # fmt: skip
    env = {**os.environ, "RECSYS_ROOT": str(cfg.paths.root_dir)}
    done = subprocess.run(args, env=env, check=False)
    if done.returncode != 0:
        raise RecsysError(f"recsys retrain failed (exit {done.returncode}); see its output above.")


def version_served(base: str, user: str) -> str:
    response = httpx.post(f"{base}/recommendations/users/{user}", json={"limit": 5}, timeout=30)
    response.raise_for_status()
    return str(response.json()["metadata"]["bundle_version"])


def wait_for(base: str, user: str, version: str, timeout_s: float) -> str:
    """The version the server answers with, once it is ``version`` (it follows the registry)."""
    deadline = time.monotonic() + timeout_s
    while (served := version_served(base, user)) != version:
        if time.monotonic() > deadline:
            raise RecsysError(f"the server still answers with {served} after {timeout_s:.0f} s")
        time.sleep(0.2)
    return served


def latest_reasons(registry: Registry, production: ModelVersion) -> str:
    newest = registry.versions(production.family)[0]
    return f"{newest.version} is {newest.stage}: {'; '.join(newest.reasons) or '-'}"
