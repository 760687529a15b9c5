"""The Ray Serve runner: the same FastAPI app and service, scaled out with Ray Serve.

Two topologies, chosen by :class:`RayAppArgs.topology`:

* ``fused`` (default; best on small machines): one ``Ingress`` deployment runs the app and
  both model stages in process. One Ray hop per request (proxy -> replica).
* ``chained``: ``Ingress`` (app, catalogue, fallbacks) -> ``Retrieval`` (user tower, FAISS
  index, co-occurrence) -> ``Ranking`` (ranker), composed with deployment handles, each with
  its own replicas and CPUs so the stages scale independently. Concurrent requests meeting a
  model are batched with ``@serve.batch``. Every Ray hop costs CPU (about 10 ms on 2 cores).

Every deployment reads one bundle. Hot swap: change ``bundle`` in the deployments'
``user_config`` (``serving/config.yaml``); ``reconfigure`` loads and verifies the new bundle
(the stages preload it before the ingress switches, so no request mixes two bundles) and a
corrupt or incompatible bundle is refused while the old one keeps serving.

    serve run serving/config.yaml            # or: recsys serve engine=ray
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

import numpy as np
import scipy.sparse as sp
from pydantic import BaseModel, Field, field_validator, model_validator
from ray import serve
from ray.serve import Application, Deployment
from ray.serve.handle import DeploymentHandle

from recsys.bundle.reader import Bundle, load_bundle, resolve
from recsys.errors import RecsysError
from recsys.inference.two_stage import Retrieved, TwoStageRecommender
from recsys.serving.app import configure_logging, create_app
from recsys.serving.core import ServingCore
from recsys.serving.faults import drill_deployment
from recsys.serving.heap import freeze_imports
from recsys.serving.live import Live
from recsys.serving.service import RecommendationService
from recsys.serving.settings import STAGE_TIMEOUT_MS, LiveSettings

log = logging.getLogger("recsys.serving.ray")
T = TypeVar("T")
Entry = tuple[Bundle, TwoStageRecommender]  # a loaded bundle and its two-stage model


class Autoscaling(BaseModel):
    """Serve's autoscaling of every deployment (replaces the fixed ``*_replicas``): replicas
    are added while each holds more than ``target_ongoing_requests`` requests on average, and
    removed below it, between ``min_replicas`` and ``max_replicas``. On KubeRay the cluster
    autoscaler adds the pods new replicas need (docs/operations.md#kubernetes)."""

    min_replicas: int = Field(default=3, ge=1)
    max_replicas: int = Field(default=20, ge=1)
    target_ongoing_requests: float = Field(default=4.0, gt=0)
    upscale_delay_s: float = Field(default=30.0, ge=0)
    downscale_delay_s: float = Field(default=600.0, ge=0)

    @model_validator(mode="after")
    def ordered(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"autoscaling.min_replicas ({self.min_replicas}) is above max_replicas "
                f"({self.max_replicas})"
            )
        return self


class RayAppArgs(BaseModel):
    """Arguments of :func:`build` (the ``args`` of an application in a Serve config)."""

    bundle: str = Field(description="bundle version folder, or a family folder with LATEST")
    topology: Literal["fused", "chained"] = "fused"
    stage_timeout_ms: float = Field(default=STAGE_TIMEOUT_MS, gt=0)
    ingress_replicas: int = Field(default=1, ge=1)
    retrieval_replicas: int = Field(default=1, ge=1)
    ranking_replicas: int = Field(default=1, ge=1)
    autoscaling: Autoscaling | None = Field(
        default=None, description="autoscale every deployment instead of fixed replicas"
    )
    ingress_cpus: float = Field(default=0.5, ge=0)
    stage_cpus: float = Field(default=0.5, ge=0)
    max_ongoing_requests: int = Field(default=32, ge=1)
    max_batch_size: int = Field(default=16, ge=1)
    batch_wait_timeout_ms: float = Field(
        default=0.0,
        ge=0,
        description="how long a stage's batch waits for more calls once one arrives: 0 takes "
        "what is queued (each ingress call is a batch already; a 2 ms wait cost the chained "
        "topology 1.14x its throughput, docs/results/serving.md); more can merge the calls of "
        "several ingress replicas",
    )
    drills: bool = Field(
        default=False,
        description="stage deployments accept fault drills (tests; recsys.serving.faults)",
    )
    live: LiveSettings = Field(
        default_factory=LiveSettings,
        description="store / trending / cache / auth / rate_limits / experiments sections "
        "(recsys.serving.settings.LiveSettings; default: no store, cache and auth on, no "
        "rate limits)",
    )

    @field_validator("bundle")
    @classmethod
    def absolute(cls, value: str) -> str:
        # Replicas may not share the caller's working directory: pin the path now.
        return _absolute(value)

    @field_validator("live")
    @classmethod
    def absolute_live_paths(cls, live: LiveSettings) -> LiveSettings:
        url = live.store.url or ""
        if url.startswith("sqlite:///"):
            live.store.url = "sqlite:///" + _absolute(url.removeprefix("sqlite:///"))
        if live.auth.secret_file:
            live.auth.secret_file = _absolute(live.auth.secret_file)
        registry = live.registry.url or ""
        if registry.startswith("sqlite:///"):
            live.registry.url = "sqlite:///" + _absolute(registry.removeprefix("sqlite:///"))
        return live


def _absolute(value: str) -> str:
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (Path.cwd() / path).resolve())


def prime_stages(bundle: Bundle, model: TwoStageRecommender, users: int = 4) -> None:
    """Both stages once for the bundle's first readers, before the stage answers anyone
    (what :meth:`RecommendationService.prime` does for a fused service: the first calls pay
    one-off set-up). A failure is logged; requests meet it again and fall back."""
    try:  # priming never fails a load: the bundle serves, and its requests fall back
        ids, matrix = bundle.first_readers(users)
        if not ids:
            return
        encoded = np.array([bundle.state.users.encode_one(u) for u in ids])
        model.rank(model.retrieve(encoded, matrix))
    except Exception as exc:
        log.warning("bundle %s: priming the stages failed: %s", bundle.version, exc)


class BundleCache:
    """Two-stage models by bundle version folder; keeps the two most recent (current and the
    one being swapped in or out), so requests in flight during a swap still find theirs.

    A bundle loads outside the lock: requests for the loaded ones never wait on a swap's load
    (they did, for all of it). Callers asking for a bundle that is loading wait for that one
    load."""

    def __init__(self, size: int = 2) -> None:
        self.size = size
        self._models: OrderedDict[str, Entry] = OrderedDict()
        self._loading: dict[str, Future[Entry]] = {}
        self._lock = threading.Lock()

    def get(self, path: str) -> Entry:
        key = str(resolve(path))
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            loading = self._loading.get(key)
            if loading is None:
                future: Future[Entry] = Future()
                self._loading[key] = future
        if loading is not None:
            return loading.result()
        try:
            bundle = load_bundle(key)  # verifies manifest schema and every checksum
            entry = (bundle, bundle.two_stage())
            prime_stages(bundle, entry[1])
        except BaseException as exc:
            with self._lock:
                del self._loading[key]
            future.set_exception(exc)
            raise
        with self._lock:
            del self._loading[key]
            self._models[key] = entry
            while len(self._models) > self.size:
                self._models.popitem(last=False)
        future.set_result(entry)
        return entry


class _Stage:
    """Shared by the two stage deployments: bundle cache, preload, hot swap."""

    def __init__(self, bundle: str, max_batch_size: int, batch_wait_timeout_ms: float) -> None:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        freeze_imports()  # before any bundle loads: bundles stay collectable
        self.cache = BundleCache()
        self.cache.get(bundle)
        self.batch_size = max_batch_size
        self.batch_wait_s = batch_wait_timeout_ms / 1000

    def _tune(self, batched: Any) -> None:
        """Apply the configured batch size and wait to a ``@serve.batch`` method."""
        batched.set_max_batch_size(self.batch_size)
        batched.set_batch_wait_timeout_s(self.batch_wait_s)

    async def preload(self, bundle: str) -> str:
        """Load and verify ``bundle`` (raises on a corrupt one); returns its version."""
        entry = await asyncio.to_thread(self.cache.get, bundle)
        return entry[0].version

    async def reconfigure(self, config: dict[str, Any]) -> None:
        if config.get("bundle"):
            try:
                await self.preload(str(config["bundle"]))
            except RecsysError as exc:
                log.error("bundle refused, the current one keeps serving: %s", exc)

    def _per_bundle(
        self, bundles: list[str], call: Callable[[TwoStageRecommender, list[int]], list[T]]
    ) -> list[T]:
        """One model call per bundle version in a batch (a swap may mix two); results back in
        request order."""
        out: dict[int, T] = {}
        for key in dict.fromkeys(bundles):
            rows = [i for i, b in enumerate(bundles) if b == key]
            _, model = self.cache.get(key)
            out.update(zip(rows, call(model, rows), strict=True))
        return [out[i] for i in range(len(bundles))]


# one retrieval call: bundle, users, their histories, their friends' reads (or None)
_RetrievalCall = tuple[str, np.ndarray, sp.csr_matrix, sp.csr_matrix | None]


@serve.deployment(name="Retrieval")
class Retrieval(_Stage):
    """Stage 1: user tower + FAISS index + co-occurrence -> candidates."""

    def __init__(self, bundle: str, max_batch_size: int, batch_wait_timeout_ms: float) -> None:
        super().__init__(bundle, max_batch_size, batch_wait_timeout_ms)
        self._tune(self._batched)

    async def retrieve(
        self,
        bundle: str,
        users: np.ndarray,
        history: sp.csr_matrix,
        social: sp.csr_matrix | None = None,
    ) -> Retrieved:
        result: Retrieved = await self._batched((bundle, users, history, social))
        return result

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.0)
    async def _batched(self, requests: list[_RetrievalCall]) -> list[Retrieved]:
        return await asyncio.to_thread(self._run, requests)

    def _run(self, requests: list[_RetrievalCall]) -> list[Retrieved]:
        bundles, users, histories, socials = (list(x) for x in zip(*requests, strict=True))

        def call(model: TwoStageRecommender, rows: list[int]) -> list[Retrieved]:
            social = None
            if any(socials[i] is not None for i in rows):  # rows without friends: empty
                social = sp.vstack(
                    [
                        sp.csr_matrix(histories[i].shape, dtype=np.float32)
                        if socials[i] is None
                        else socials[i]
                        for i in rows
                    ],
                    format="csr",
                )
            merged = model.retrieve(
                np.concatenate([users[i] for i in rows]),
                sp.vstack([histories[i] for i in rows], format="csr"),
                social=social,
            )
            return merged.split([len(users[i]) for i in rows])

        return self._per_bundle(bundles, call)


@serve.deployment(name="Ranking")
class Ranking(_Stage):
    """Stage 2: the ranker over the candidates."""

    def __init__(self, bundle: str, max_batch_size: int, batch_wait_timeout_ms: float) -> None:
        super().__init__(bundle, max_batch_size, batch_wait_timeout_ms)
        self._tune(self._batched)

    async def rank(self, bundle: str, retrieved: Retrieved) -> np.ndarray:
        result: np.ndarray = await self._batched((bundle, retrieved))
        return result

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.0)
    async def _batched(self, requests: list[tuple[str, Retrieved]]) -> list[np.ndarray]:
        return await asyncio.to_thread(self._run, requests)

    def _run(self, requests: list[tuple[str, Retrieved]]) -> list[np.ndarray]:
        bundles = [b for b, _ in requests]
        retrieved = [r for _, r in requests]

        def call(model: TwoStageRecommender, rows: list[int]) -> list[np.ndarray]:
            scores = model.rank(Retrieved.concat([retrieved[i] for i in rows]))
            ends = np.cumsum([len(retrieved[i]) for i in rows])[:-1]
            return list(np.split(scores, ends))

        return self._per_bundle(bundles, call)


class RemoteStages:
    """:class:`recsys.serving.stages.Stages` over deployment handles (chained topology).

    Called from the service's worker threads (never the event loop), so it blocks on results.
    """

    def __init__(
        self,
        retrieval: DeploymentHandle,
        ranking: DeploymentHandle,
        bundle: str,
        timeout_s: float,
        n_books: int,
    ) -> None:
        self.retrieval, self.ranking = retrieval, ranking
        self.bundle, self.timeout_s, self.n_books = bundle, timeout_s, n_books

    def retrieve(
        self, users: np.ndarray, history: sp.csr_matrix, social: sp.csr_matrix | None = None
    ) -> Retrieved:
        # The stage deployments know the bundle's books only: books added to the catalogue
        # since are retrievable in the fused topology (and the local runner), not here.
        history = history[:, : self.n_books]
        if social is not None:
            social = social[:, : self.n_books]
        response = self.retrieval.retrieve.remote(self.bundle, users, history, social)
        result: Retrieved = response.result(timeout_s=self.timeout_s)
        return result

    def rank(self, retrieved: Retrieved) -> np.ndarray:
        response = self.ranking.rank.remote(self.bundle, retrieved)
        result: np.ndarray = response.result(timeout_s=self.timeout_s)
        return result


@serve.deployment(name="Ingress")
@serve.ingress()
class Ingress:
    """The FastAPI app (routes, catalogue, fallbacks, metrics) in front of the stages."""

    def __init__(
        self,
        bundle: str,
        stage_timeout_ms: float,
        retrieval: DeploymentHandle | None = None,
        ranking: DeploymentHandle | None = None,
        live: dict[str, Any] | None = None,
    ) -> None:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        configure_logging()
        freeze_imports()  # before any bundle loads: bundles stay collectable
        # Stores, trending and cache outlive bundle swaps (one per replica; the store and
        # Redis are shared by replicas).
        self.live = Live.from_config(live or {})
        self.retrieval, self.ranking = retrieval, ranking
        self.stage_timeout_s = stage_timeout_ms / 1000
        # a swap (reconfigure, or following the model registry) has the stages preload first
        preloaded = functools.partial(self._service, preload=True)
        self.core = ServingCore(self._service(load_bundle(bundle)), build=preloaded)

    def _service(self, bundle: Bundle, preload: bool = False) -> RecommendationService:
        """The service of ``bundle``; ``preload``: the stages load it first (a swap; at
        start the stages load the bundle they are built with). Called off the event loop."""
        stages = None
        if self.retrieval is not None and self.ranking is not None and bundle.has_ranker:
            if preload:  # no request can ask the stages for a version they lack
                calls = [s.preload.remote(str(bundle.path)) for s in (self.retrieval, self.ranking)]
                for call in calls:  # both load at once
                    call.result(timeout_s=600)
            # The stages answer within the budget or the service falls back; the handle
            # gives up a little later so no worker thread waits forever.
            stages = RemoteStages(
                self.retrieval,
                self.ranking,
                str(bundle.path),
                self.stage_timeout_s * 2 + 1,
                bundle.state.books.size,
            )
        return RecommendationService(bundle, self.stage_timeout_s, stages, live=self.live)

    def __serve_build_asgi_app__(self) -> Any:
        return create_app(lambda: self.core, echo_request_id=False, cancel_on_disconnect=False)

    async def reconfigure(self, config: dict[str, Any]) -> None:
        """Hot swap to ``config['bundle']`` (the core's swap: a bundle that fails to load is
        refused); experiments and the stage budget change in place."""
        if "stage_timeout_ms" in config:
            self.stage_timeout_s = float(config["stage_timeout_ms"]) / 1000
            self.core.service.stage_timeout_s = self.stage_timeout_s
        if "experiments" in config:
            try:  # variant traffic and bundles change with no restart; a bad one is refused
                await asyncio.to_thread(self.core.experiments.apply, config["experiments"])
            except Exception as exc:
                log.error("experiments refused, the current setup stays: %s", exc)
        if config.get("bundle"):
            await asyncio.to_thread(self.core.swap, str(config["bundle"]))


def as_deployment(decorated: Any) -> Deployment:
    """The ``@serve.deployment`` classes are Deployments (mypy sees the class)."""
    return cast(Deployment, decorated)


def build(args: RayAppArgs) -> Application:
    """The typed application builder (``import_path: recsys.serving.ray_app:build``)."""
    if isinstance(args, dict):  # called from Python with a plain dict
        args = RayAppArgs.model_validate(args)
    bundle = load_bundle(args.bundle)  # fail before deploying, with the bundle's own message
    if args.topology == "chained" and not bundle.has_ranker:
        raise RecsysError(
            f"{bundle.path} has no ranker: the chained topology needs one "
            "(use topology=fused, or train with ranker.enabled=true)."
        )
    user_config = {"bundle": args.bundle, "stage_timeout_ms": args.stage_timeout_ms}
    live = args.live.model_dump(mode="json")  # plain data for the replicas

    def replicas(fixed: int) -> dict[str, Any]:
        if args.autoscaling is None:
            return {"num_replicas": fixed}
        return {"autoscaling_config": args.autoscaling.model_dump()}

    ingress = as_deployment(Ingress).options(
        **replicas(args.ingress_replicas),
        max_ongoing_requests=args.max_ongoing_requests,
        ray_actor_options={"num_cpus": args.ingress_cpus},
        user_config=user_config,
    )
    if args.topology == "fused":
        return ingress.bind(args.bundle, args.stage_timeout_ms, None, None, live)

    def stage(kind: Any, count: int) -> Application:
        return (
            as_deployment(kind)
            .options(
                **replicas(count),
                max_ongoing_requests=args.max_ongoing_requests,
                ray_actor_options={"num_cpus": args.stage_cpus},
                user_config={"bundle": args.bundle},
            )
            .bind(args.bundle, args.max_batch_size, args.batch_wait_timeout_ms)
        )

    kinds = (Retrieval, Ranking)
    if args.drills:
        kinds = tuple(drill_deployment(kind) for kind in kinds)
    retrieval = stage(kinds[0], args.retrieval_replicas)
    ranking = stage(kinds[1], args.ranking_replicas)
    return ingress.bind(args.bundle, args.stage_timeout_ms, retrieval, ranking, live)
