"""A/B experiments and model switching for user recommendations.

An experiments file (YAML, watched: edits apply without a restart)::

    default_bundle: null            # promote: swap the bundle everyone else gets
    experiments:
      - name: ranker_v2
        active: true
        salt: ranker_v2             # assignment = sha256(salt:user_id), stable everywhere
        variants: {control: 50, treatment: 50}      # percent, sums to 100
        settings:                   # per variant: a bundle (version folder or family),
          treatment: {bundle: artifacts/bundles/synthetic/20261129T...}
          # and/or pipeline: retrieval (two-tower only) | two_stage (default)

At most one experiment is active. A variant's bundle is loaded next to the default one
(several versions serve at once); a new file is validated and its bundles loaded and verified
before it replaces the current one, so a bad edit is refused and nothing fails meanwhile.
``X-Experiment-Variant: <variant>`` forces a variant (testing).
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml

from recsys.bundle.reader import load_bundle, resolve
from recsys.errors import RecsysError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Experiment:
    name: str
    variants: dict[str, float]  # percent
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    salt: str = ""
    active: bool = True

    def assign(self, user_id: str) -> str:
        """The user's variant: a stable hash bucket in [0, 10000) over the percentages."""
        digest = hashlib.sha256(f"{self.salt or self.name}:{user_id}".encode()).hexdigest()
        bucket = int(digest[:8], 16) % 10_000
        edge = 0.0
        for variant, percent in self.variants.items():
            edge += percent * 100
            if bucket < edge:
                return variant
        return next(reversed(self.variants))

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> Experiment:
        name = str(raw.get("name") or "")
        if not name:
            raise RecsysError("an experiment needs a name")
        variants = {str(k): float(v) for k, v in (raw.get("variants") or {}).items()}
        if max(map(len, [name, *variants])) > 200:  # they key stored impressions
            raise RecsysError(f"experiment {name[:40]}: names of at most 200 characters")
        if len(variants) < 2:
            raise RecsysError(f"experiment {name}: give at least two variants")
        if any(v < 0 for v in variants.values()) or abs(sum(variants.values()) - 100) > 1e-6:
            raise RecsysError(f"experiment {name}: variant percentages must sum to 100")
        settings = {str(k): dict(v or {}) for k, v in (raw.get("settings") or {}).items()}
        unknown = set(settings) - set(variants)
        if unknown:
            raise RecsysError(f"experiment {name}: settings for unknown variant(s) {unknown}")
        for variant, setting in settings.items():
            extra = set(setting) - {"bundle", "pipeline"}
            if extra:
                raise RecsysError(f"experiment {name}/{variant}: unknown setting(s) {extra}")
            if setting.get("pipeline", "two_stage") not in ("two_stage", "retrieval"):
                raise RecsysError(f"experiment {name}/{variant}: pipeline two_stage|retrieval")
        return cls(
            name, variants, settings, str(raw.get("salt") or ""), bool(raw.get("active", True))
        )


@dataclass
class Plan:
    """A parsed experiments file."""

    experiments: list[Experiment]
    default_bundle: str | None = None

    @property
    def active(self) -> Experiment | None:
        return next((e for e in self.experiments if e.active), None)

    @classmethod
    def parse(cls, raw: dict[str, Any] | None) -> Plan:
        raw = raw or {}
        experiments = [Experiment.parse(e) for e in raw.get("experiments") or []]
        names = [e.name for e in experiments]
        if len(set(names)) != len(names):
            raise RecsysError("experiment names must be unique")
        if sum(e.active for e in experiments) > 1:
            raise RecsysError("at most one experiment may be active at a time")
        default = raw.get("default_bundle")
        return cls(experiments, str(default) if default else None)


@dataclass(frozen=True)
class Assignment:
    experiment: str | None
    variant: str | None
    service: Any  # RecommendationService
    retrieval_only: bool = False


class Experiments:
    """The services by bundle, the active experiment, and how to reload both.

    Args:
        build: bundle -> RecommendationService (sharing the process's stores and cache).
        default: the service of the bundle the server started with.
        install: makes a new default service current when ``default_bundle`` changes (the
            serving core's hot swap: it sets ``default`` and retires the old one).
        grace_s: how long a retired service keeps answering requests that hold it.
    """

    def __init__(
        self,
        build: Callable[[Any], Any],
        default: Any,
        install: Callable[[Any], None],
        grace_s: float = 30.0,
    ) -> None:
        self.build, self.install, self.grace_s = build, install, grace_s
        self.default = default
        self.plan = Plan([])
        self.services: dict[str, Any] = {}  # variant bundle path -> service
        # a canary from the model registry: (experiment, canary service); while set it is the
        # active experiment (the file's active one resumes after it)
        self.canary: tuple[Experiment, Any] | None = None
        self._lock = threading.Lock()

    def assign(self, user_id: str, forced: str | None = None) -> Assignment:
        plan, services, default, canary = self.plan, self.services, self.default, self.canary
        if canary is not None:
            split, canary_service = canary
            if forced is not None and forced not in split.variants:
                raise RecsysError(f"unknown variant '{forced}' of {split.name}: canary")
            variant = forced or split.assign(user_id)
            chosen = canary_service if variant == "canary" else default
            return Assignment(split.name, variant, chosen)
        experiment = plan.active
        if experiment is None:
            if forced:
                raise RecsysError("X-Experiment-Variant given but no experiment is active")
            return Assignment(None, None, default)
        if forced is not None and forced not in experiment.variants:
            raise RecsysError(
                f"unknown variant '{forced}' of {experiment.name}: {sorted(experiment.variants)}"
            )
        variant = forced or experiment.assign(user_id)
        setting = experiment.settings.get(variant, {})
        service = services.get(str(resolve(setting["bundle"]))) if "bundle" in setting else None
        return Assignment(
            experiment.name,
            variant,
            service or default,
            setting.get("pipeline") == "retrieval",
        )

    def retire(self, service: Any) -> None:
        """Close ``service`` after the grace period (requests holding it finish first), unless
        it is the default or a variant's again by then."""

        def close() -> None:
            canary = self.canary[1] if self.canary is not None else None
            if (
                service is not self.default
                and service is not canary
                and all(s is not service for s in self.services.values())
            ):
                service.close()

        timer = threading.Timer(self.grace_s, close)
        timer.daemon = True
        timer.start()

    def load(self, path: str | Path) -> Any:
        """The service of the bundle at ``path``, built and primed (its model path run once)
        before it takes any traffic."""
        service = self.build(load_bundle(path))
        service.prime()
        return service

    def set_canary(self, family: str, path: str | None, percent: float = 0.0) -> None:
        """Send ``percent`` of users (stable hash buckets: raising the share keeps everyone
        already in the canary there) to the bundle at ``path`` as experiment
        ``canary:<family>``, variants ``canary`` and ``production``; ``path=None`` ends it.
        The bundle is loaded and verified first (raises; nothing changes)."""
        with self._lock:
            old = self.canary
            if path is None:
                self.canary = None
            else:
                service = old[1] if old and str(old[1].bundle.path) == str(resolve(path)) else None
                service = service or self.load(path)
                experiment = Experiment(
                    f"canary:{family}", {"canary": percent, "production": 100.0 - percent}
                )
                self.canary = (experiment, service)
            if old is not None and (self.canary is None or self.canary[1] is not old[1]):
                self.retire(old[1])

    def apply(self, raw: dict[str, Any] | None) -> None:
        """Validate ``raw``, load every bundle it names, then switch. Raises on a bad file
        (nothing changes). A new ``default_bundle`` goes through ``install`` (the serving
        core's hot swap)."""
        with self._lock:
            plan = Plan.parse(raw)
            wanted: dict[str, Any] = {}
            for experiment in plan.experiments:
                for setting in experiment.settings.values():
                    if "bundle" in setting:
                        path = str(resolve(setting["bundle"]))
                        wanted[path] = self.services.get(path) or self.load(path)
            new_default = None
            if plan.default_bundle:
                path = str(resolve(plan.default_bundle))
                if path != str(self.default.bundle.path):
                    new_default = wanted.get(path) or self.load(path)
            retired = [s for p, s in self.services.items() if p not in wanted]
            self.services, self.plan = wanted, plan
            if new_default is not None:
                self.install(new_default)
            for service in {id(s): s for s in retired}.values():
                self.retire(service)  # never the default or a variant still in use
            log.info(
                "experiments applied: active=%s, bundles=%d",
                plan.active.name if plan.active else None,
                len(wanted),
            )


class Applies(Protocol):
    def apply(self, raw: dict[str, Any] | None) -> None: ...


class FileWatcher:
    """Re-apply a YAML file when it changes (polls its mtime): the experiments file, the
    business rules. ``target.apply`` validates whole and raises on a bad file."""

    def __init__(
        self, path: str, target: Applies, poll_s: float = 1.0, what: str = "experiments"
    ) -> None:
        self.path, self.target, self.poll_s, self.what = Path(path), target, poll_s, what
        self.mtime = 0.0
        self.error: str | None = None
        self.check()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"{what}-watch", daemon=True)
        self._thread.start()

    def check(self) -> bool:
        """Apply the file if it changed; a bad file is logged and refused."""
        try:
            mtime = self.path.stat().st_mtime
        except OSError:
            return False
        if mtime == self.mtime:
            return False
        try:
            raw = yaml.safe_load(self.path.read_text()) or {}
            if not isinstance(raw, dict):
                raise RecsysError(f"{self.path}: expected a mapping at the top level")
            self.target.apply(raw)
            self.error = None
            return True
        except (RecsysError, yaml.YAMLError, OSError) as exc:
            self.error = str(exc)
            log.error("%s file %s refused, the current setup stays: %s", self.what, self.path, exc)
            return False
        finally:
            self.mtime = mtime  # marks this version as handled (applied or refused)

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.check()

    def stop(self) -> None:
        self._stop.set()


def wilson(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion."""
    if trials == 0:
        return 0.0, 0.0
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * ((p * (1 - p) / trials + z * z / (4 * trials * trials)) ** 0.5) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def ctr_report(counts: dict[str, tuple[int, int]], control: str = "control") -> dict[str, Any]:
    """Rows per variant from (impressions, clicked impressions): CTR with a Wilson 95%
    interval, and the difference to ``control`` with a normal-approximation 95% interval."""
    rows: dict[str, dict[str, Any]] = {}
    base = counts.get(control)
    for variant, (shown, clicked) in sorted(counts.items()):
        ctr = clicked / shown if shown else 0.0
        low, high = wilson(clicked, shown)
        row: dict[str, Any] = {
            "impressions": shown,
            "clicked": clicked,
            "ctr": round(ctr, 5),
            "ctr_95_low": round(low, 5),
            "ctr_95_high": round(high, 5),
        }
        if base is not None and variant != control and shown and base[0]:
            p0 = base[1] / base[0]
            se = (ctr * (1 - ctr) / shown + p0 * (1 - p0) / base[0]) ** 0.5
            row["diff_vs_control"] = round(ctr - p0, 5)
            row["diff_95_low"] = round(ctr - p0 - 1.96 * se, 5)
            row["diff_95_high"] = round(ctr - p0 + 1.96 * se, 5)
        rows[variant] = row
    return rows


class ImpressionLog:
    """Impressions written in the background, in batches (every ``flush_s``): logging them
    must not add a disk sync to every request. ``flush`` writes what is queued now, and
    returns only once every impression queued before the call is written (a write in
    progress in the background included: feedback right after a list must find it)."""

    def __init__(
        self,
        store: Any,
        flush_s: float = 0.5,
        write: Callable[[list[dict[str, Any]]], None] | None = None,
    ) -> None:
        self.store, self.flush_s = store, flush_s
        self.write = write or store.log_impressions  # or another table's rows
        self._queue: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._writing = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="impressions", daemon=True)
        self._thread.start()

    def add(self, row: dict[str, Any]) -> None:
        self._queue.put(row)

    def flush(self) -> int:
        with self._writing:
            rows = []
            while True:
                try:
                    rows.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if rows:
                try:
                    self.write(rows)
                except Exception:  # keep serving; the rows are lost, and logged as such
                    log.exception("could not write %d impressions", len(rows))
            return len(rows)

    def _run(self) -> None:
        while not self._stop.wait(self.flush_s):
            self.flush()

    def close(self) -> None:
        self._stop.set()
        self.flush()
