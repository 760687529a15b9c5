"""ServingCore: what one serving process holds beyond a request, for every runner.

The current bundle's :class:`RecommendationService`, the experiments (variant services), and
the policies around the recommendation endpoints: response cache, experiment assignment,
impression logging, answer shaping and its metrics. Hot swap is one mechanism here
(:meth:`ServingCore.swap` verifies and loads a bundle, :meth:`ServingCore.install` switches),
used by the uvicorn runner (experiment promotion) and by Ray Serve (``reconfigure``) alike.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from recsys.bundle.reader import Bundle, load_bundle, resolve
from recsys.errors import RecsysError
from recsys.lifecycle.guardrails import ArmStats, arm_stats
from recsys.serving import blocking
from recsys.serving.cache import user_params
from recsys.serving.drift import DriftCollector, DriftMonitor
from recsys.serving.experiments import Assignment, Experiments, FileWatcher, ctr_report, wilson
from recsys.serving.follow import ProductionFollower
from recsys.serving.live import Live
from recsys.serving.metrics import Metrics
from recsys.serving.personalised import TRANSIENT, Answer
from recsys.serving.quality import Coverage, QualityCollector, author_diversity
from recsys.serving.schemas import (
    ExperimentSeries,
    ExperimentsOverview,
    ExperimentStatus,
    Explored,
    Metadata,
    Recommendation,
    RecommendationResponse,
    RecommendRequest,
    SeriesPoint,
)
from recsys.serving.service import RecommendationService
from recsys.serving.vitals import Vitals
from recsys.serving.warmup import CacheWarmer

log = logging.getLogger(__name__)
Call = Callable[[RecommendationService], Answer]
Build = Callable[[Bundle], RecommendationService]


class BadVariant(RecsysError):
    """An X-Experiment-Variant that names no variant of the active experiment (HTTP 422)."""


class ServingCore:
    """Process-level serving state and policies (see the module docstring).

    Args:
        service: the service of the bundle the process starts with.
        metrics: where answers, cache lookups, impressions and swaps are counted, with the
            served lists' diversity and coverage and the inputs' drift.
        build: how a swapped-in bundle's service is built (default: sharing this process's
            stores and settings; Ray's chained ingress has its stages preload it first).
    """

    def __init__(
        self,
        service: RecommendationService,
        metrics: Metrics | None = None,
        build: Build | None = None,
    ) -> None:
        self.metrics = metrics or Metrics()
        self.build = build
        self._swapping = threading.Lock()  # one swap at a time (registry, reconfigure)
        self.live: Live = service.live
        self.experiments = Experiments(service.sibling, service, self.install)
        self.metrics.watch(self.live.breakers())
        watch = self.live.monitoring
        self.drift = DriftMonitor(watch.drift_window, watch.drift_min_samples)
        self.drift.rebase(service.bundle)
        self.coverage = Coverage(watch.coverage_window_s)
        self.metrics.collector(DriftCollector(self.drift))
        self.metrics.collector(QualityCollector(self.coverage, self.served_bundles))
        self.watcher: FileWatcher | None = None
        self.rules_watcher: FileWatcher | None = None
        self.follower: ProductionFollower | None = None
        self.warmer = CacheWarmer(self)
        self.vitals = Vitals(self.metrics.exported)  # the console's health view

    @property
    def service(self) -> RecommendationService:
        """The service of the current default bundle (changes on a swap)."""
        current: RecommendationService = self.experiments.default
        return current

    def served_bundles(self) -> list[tuple[str, dict[str, Any]]]:
        """(version, manifest metrics) of the default bundle and the variants' bundles."""
        services = [self.service, *self.experiments.services.values()]
        unique = {s.version: s.bundle.manifest.metrics for s in services}
        return sorted(unique.items())

    def serving(self) -> list[tuple[str, str]]:
        """(family, version) of the default bundle, then of the variants' bundles."""
        services = [self.service, *self.experiments.services.values()]
        if self.experiments.canary is not None:
            services.append(self.experiments.canary[1])
        return [(s.bundle.manifest.bundle_name, s.version) for s in services]

    def set_canary(self, family: str, path: str | None, percent: float) -> None:
        """A canary from the model registry (:meth:`Experiments.set_canary`)."""
        self.experiments.set_canary(family, path, percent)

    def stats(self) -> dict[str, ArmStats]:
        """Answers by bundle version since start (what a canary's guardrails compare)."""
        return arm_stats(self.metrics.registry)

    def start(self) -> None:
        """Background work: warm the response cache, watch the experiments file and follow
        the model registry's production version, each when configured; sample the metrics
        for the console's health view."""
        self.vitals.start()
        self.service.prime()
        self.warmer.warm(self.service)
        if self.live.experiments_file:
            self.watcher = FileWatcher(
                self.live.experiments_file, self.experiments, self.live.experiments_poll_s
            )
        if self.live.rules_file:
            rules = self.live.rules
            rules.folder = Path(self.live.rules_file).parent
            rules.known = lambda book: book in self.service.catalogue.index
            self.rules_watcher = FileWatcher(
                self.live.rules_file, rules, self.live.rules_poll_s, what="rules"
            )
        registry = self.live.registry
        if registry.url:
            family = registry.family or self.service.bundle.manifest.bundle_name
            self.follower = ProductionFollower(self, registry.url, family, registry.poll_s)

    def close(self) -> None:
        """Stop the cache warm-up, the experiments watcher and the registry follower, close
        the services, then what outlives them (the store connections, the impression
        writer)."""
        self.warmer.stop()
        self.vitals.stop()
        if self.watcher is not None:
            self.watcher.stop()
        if self.rules_watcher is not None:
            self.rules_watcher.stop()
        if self.follower is not None:
            self.follower.stop()
        self.service.close()
        self.live.close()

    # --- hot swap --------------------------------------------------------------------------

    def swap(self, path: str | Path, build: Build | None = None) -> bool:
        """Load and verify the bundle at ``path`` (a version or a family folder), build its
        service (``build``, else the core's, else sharing this process's stores and
        settings), then switch to it. A bundle that fails to load or build is refused and the
        current one keeps serving. Returns whether it switched (False also when ``path`` is
        the current bundle). One swap at a time."""
        with self._swapping:
            current = self.service
            try:
                folder = resolve(path)
                if folder.resolve() == current.bundle.path.resolve():
                    return False
                service = (build or self.build or current.sibling)(load_bundle(folder))
                service.prime()  # the first readers it answers do not pay its set-up
            except Exception as exc:  # any failure leaves the old bundle serving
                log.error("bundle %s refused, %s keeps serving: %s", path, current.version, exc)
                self.metrics.swaps.labels("refused").inc()
                return False
            self.install(service)
            return True

    def install(self, service: RecommendationService) -> None:
        """Make ``service`` the default: requests already holding the old one finish on it
        (one service object per request, so no answer mixes two bundles), and it is closed
        after a grace period unless an experiment variant still serves it."""
        old = self.experiments.default
        self.experiments.default = service
        if self.live.cache is not None:
            self.live.cache.clear()  # level 2 is keyed by bundle version
            self.warmer.warm(service)  # the most active readers' lists, in the background
        self.metrics.swaps.labels("loaded").inc()
        self.drift.rebase(service.bundle)
        log.info("bundle swapped: %s -> %s", old.version, service.version)
        self.experiments.retire(old)

    # --- experiments -----------------------------------------------------------------------

    def experiments_overview(self, control: str = "control") -> ExperimentsOverview:
        """The experiments file as applied, with click-through per variant from the store."""
        plan, stores = self.experiments.plan, self.live.stores
        out = []
        for experiment in plan.experiments:
            results = None
            if stores.persistent:
                counts = stores.experiments.experiment_counts(experiment.name)
                results = ctr_report(counts, control)
            out.append(
                ExperimentStatus(
                    name=experiment.name,
                    active=experiment.active,
                    variants=experiment.variants,
                    settings={
                        v: {k: str(x) for k, x in s.items()} for v, s in experiment.settings.items()
                    },
                    results=results,
                )
            )
        return ExperimentsOverview(bundle_version=self.service.version, experiments=out)

    def experiment_series(self, name: str, bucket_s: int) -> ExperimentSeries:
        """Click-through of ``name``'s variants per time bucket, each with its Wilson 95%
        interval (the store's impressions; 503 without a store)."""
        rows = self.live.stores.experiments.experiment_series(name, bucket_s)
        points = []
        for at, variant, shown, clicked in rows:
            low, high = wilson(clicked, shown)
            points.append(
                SeriesPoint(
                    at=at,
                    variant=variant,
                    impressions=shown,
                    clicked=clicked,
                    ctr=clicked / shown if shown else 0.0,
                    ctr_95_low=low,
                    ctr_95_high=high,
                )
            )
        return ExperimentSeries(name=name, bucket_s=bucket_s, points=points)

    # --- recommendation policies -----------------------------------------------------------

    async def recommend_user(
        self,
        user_id: str,
        req: RecommendRequest,
        forced: str | None,
        request_id: str,
        impression_id: str,
    ) -> dict[str, Any]:
        """A user's list as response JSON: experiment arm, then the cache, else the model
        (cached unless a transient fallback); the impression logged under an experiment as
        ``impression_id`` (server-chosen and unique: ``metadata.impression_id``, the key
        feedback names). Counted per answering bundle (ok, transient fallback or error): what
        a canary's guardrails compare."""
        try:
            arm = self.experiments.assign(user_id, forced)
        except RecsysError as exc:
            raise BadVariant(str(exc)) from None
        started, outcome = time.perf_counter(), "error"
        try:
            body = await self._recommend_arm(arm, user_id, req, forced, request_id, impression_id)
            outcome = "fallback" if body["metadata"]["fallback_reason"] in TRANSIENT else "ok"
            return body
        except asyncio.CancelledError:
            outcome = ""  # the caller left: no answer of the bundle's to count
            raise
        finally:
            if outcome:
                elapsed = time.perf_counter() - started
                self.metrics.bundle_answer(arm.service.version, outcome, elapsed)

    async def _recommend_arm(
        self,
        arm: Assignment,
        user_id: str,
        req: RecommendRequest,
        forced: str | None,
        request_id: str,
        impression_id: str,
    ) -> dict[str, Any]:
        svc: RecommendationService = arm.service
        default = svc is self.service  # drift compares inputs with the default bundle's
        if default:
            self.drift.request(user_id)
        params = user_params(req, arm.experiment, arm.variant, self.live.rules.version)
        cached = await self._cached(svc, user_id, params, request_id)
        logged = forced is None  # a forced variant (testing) is no experiment data
        if cached is not None and default:  # a cache hit is traffic too (warmed users are)
            self.drift.served(cached, scored=not arm.retrieval_only)
        if cached is not None:
            if logged:
                self._impression(user_id, arm, cached, impression_id)
            if logged:
                self._explorations(user_id, cached, request_id)  # served again: logged again
            return cached
        started = time.perf_counter()
        answer = await self._answer(
            "user",
            lambda s: s.for_user(user_id, req.limit, req.exclude, req.filters, arm.retrieval_only),
            svc,
        )
        if default:
            self.drift.answer(answer, scored=not arm.retrieval_only)
        response = self.shape(svc, answer, started, request_id)
        response.metadata.experiment, response.metadata.variant = arm.experiment, arm.variant
        cache = svc.live.cache
        if cache is not None and response.metadata.fallback_reason not in TRANSIENT:
            entry = response.model_dump_json()
            if not cache.shared:  # in-process only: no hop (a Redis write is, as the read)
                cache.put(svc.version, user_id, params, entry)
            else:
                await blocking.run(cache.put, svc.version, user_id, params, entry)
        body = response.model_dump(mode="json")
        if logged:  # a forced variant (testing) is no experiment or exploration data
            self._impression(user_id, arm, body, impression_id)
            self._explorations(user_id, body, request_id)
        return body

    async def _cached(
        self, svc: RecommendationService, user_id: str, params: dict[str, Any], request_id: str
    ) -> dict[str, Any] | None:
        """A cached answer with this request's metadata, or None (cache off or a miss)."""
        cache = svc.live.cache
        if cache is None:
            return None
        started = time.perf_counter()
        if not cache.shared:  # in-process only (or Redis skipped after a failure): no hop
            hit, where = cache.get(svc.version, user_id, params)
        else:
            hit, where = await blocking.run(cache.get, svc.version, user_id, params)
        self.metrics.cache_lookup(where)
        if hit is None:
            return None
        cached: dict[str, Any] = json.loads(hit)
        cached["metadata"].update(
            request_id=request_id,
            latency_ms=round((time.perf_counter() - started) * 1000, 3),
            cache=where,
        )
        return cached

    def _explorations(self, user_id: str, body: dict[str, Any], request_id: str) -> None:
        """Log a served list's exploration slots with their propensities (background)."""
        log_rows = self.live.explorations
        explored = body["metadata"].get("explored") or []
        if log_rows is None or not explored:
            return
        now = time.time()
        for slot in explored:
            log_rows.add(
                {
                    "request_id": request_id,
                    "at": now,
                    "user_id": user_id,
                    "bundle": body["metadata"]["bundle_version"],
                    **slot,
                }
            )

    def _impression(
        self, user_id: str, arm: Assignment, body: dict[str, Any], impression_id: str
    ) -> None:
        """Log a list served under an experiment (written in the background)."""
        if arm.experiment is None or self.live.impressions is None:
            return
        body["metadata"]["impression_id"] = impression_id
        bundle = body["metadata"]["bundle_version"]
        self.live.impressions.add(
            {
                "request_id": impression_id,
                "at": time.time(),
                "user_id": user_id,
                "experiment": arm.experiment,
                "variant": arm.variant,
                "books": json.dumps([i["book_id"] for i in body["recommendations"]]),
                "bundle": bundle,
            }
        )
        self.metrics.impressions.labels(arm.experiment, arm.variant, bundle).inc()

    async def respond(
        self,
        endpoint: str,
        call: Call,
        request_id: str,
        chosen: RecommendationService | None = None,
    ) -> RecommendationResponse:
        """Run ``call`` on one service (a swap in between never mixes two bundles) in a
        worker thread, count it, and shape the answer as the response."""
        svc = chosen or self.service
        started = time.perf_counter()
        answer = await self._answer(endpoint, call, svc)
        return self.shape(svc, answer, started, request_id)

    async def _answer(self, endpoint: str, call: Call, svc: RecommendationService) -> Answer:
        """``call`` on ``svc`` in a worker thread, counted: latency, fallback, and the list's
        diversity and catalogue coverage."""
        started = time.perf_counter()
        answer = await blocking.run(call, svc)
        self.metrics.service.labels(endpoint).observe(time.perf_counter() - started)
        for stage, ms in answer.timings_ms.items():
            self.metrics.stage.labels(stage).observe(ms / 1000)
        if answer.batch:
            self.metrics.batch_size.observe(answer.batch)
        if answer.fallback_reason:
            self.metrics.fallbacks.labels(answer.fallback_reason).inc()
        authors = svc.catalogue.authors
        diversity = author_diversity([authors[b] for b in answer.books])
        if diversity is not None:  # an empty list has none
            self.metrics.diversity.labels(endpoint, svc.version).observe(diversity)
            self.coverage.add(svc.version, svc.catalogue, answer.books, time.time())
        return answer

    def shape(
        self, svc: RecommendationService, answer: Answer, started: float, request_id: str
    ) -> RecommendationResponse:
        """The answer as the response (``started``: when the service call began)."""
        return shape_answer(svc, answer, started, request_id)


def shape_answer(
    svc: RecommendationService, answer: Answer, started: float, request_id: str
) -> RecommendationResponse:
    """A service's answer as the response body of the recommendation endpoints (``started``:
    when the service call began): also what the TorchServe export answers."""
    cat = svc.catalogue
    items = [
        Recommendation(
            book_id=str(cat.ids[b]),
            title=cat.titles[b],
            author=cat.authors[b],
            confidence_score=round(float(s), 6),
            reasoning=r,
        )
        for b, s, r in zip(answer.books, answer.scores, answer.reasons, strict=True)
    ]
    meta = Metadata(
        source=answer.source,  # type: ignore[arg-type]
        bundle_version=svc.version,
        latency_ms=round((time.perf_counter() - started) * 1000, 3),
        request_id=request_id,
        fallback_reason=answer.fallback_reason,
        rules=answer.rules,
        explored=[
            Explored(book_id=str(cat.ids[b]), position=p, propensity=q, pool=n)
            for b, p, q, n in answer.explored
        ],
        history_length=answer.history_length,
        from_model=answer.from_model if answer.source == "personalized" else None,
    )
    return RecommendationResponse(recommendations=items, metadata=meta)
