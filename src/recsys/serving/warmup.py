"""Cache warming: after start-up and after each bundle swap, the default lists of the most
active readers are computed in the background and cached, so their first request after a swap
is a cache hit instead of a model call (the design's warm-up).

Bounded in readers (``cache.warm_users``) and time (``cache.warm_seconds``), off the request
path: one daemon thread asks the service as a request would, so its rows share the model's
micro-batches with live requests, and it pauses while requests queue for the model. A newer
warm-up (another swap) ends an older one. "Most active" is read from the bundle: the readers
with the longest known histories. Readers in an experiment are left to their own requests
(their answers depend on the arm, and warming must log no impression).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

from recsys.serving.cache import user_params
from recsys.serving.personalised import TRANSIENT, Answer
from recsys.serving.schemas import RecommendationResponse, RecommendRequest
from recsys.serving.service import RecommendationService


class _Core(Protocol):
    """What a warm-up needs of the serving core (:class:`~recsys.serving.core.ServingCore`,
    which imports this module)."""

    experiments: Any
    metrics: Any

    @property
    def service(self) -> RecommendationService: ...

    def shape(
        self, svc: RecommendationService, answer: Answer, started: float, request_id: str
    ) -> RecommendationResponse: ...


log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WarmUp:
    """What one warm-up did."""

    bundle: str
    warmed: int
    seconds: float
    complete: bool  # every chosen reader was looked at (not cut by time or a newer swap)


def most_active(service: RecommendationService, n: int) -> list[str]:
    """The ``n`` readers with the longest histories in the bundle, longest first."""
    frame = service.bundle.known_histories
    lengths = frame.get_column("history").list.len()
    top = frame.get_column("user_id").gather(lengths.arg_sort(descending=True)[:n])
    return [str(u) for u in top.to_list()]


class CacheWarmer:
    """Warms the response cache for the serving core's current bundle (:meth:`warm`)."""

    def __init__(self, core: _Core) -> None:
        self.core = core
        self.last: WarmUp | None = None
        self.thread: threading.Thread | None = None
        self._generation = 0
        self._lock = threading.Lock()

    def warm(self, service: RecommendationService) -> threading.Thread | None:
        """Start warming for ``service`` (ending any warm-up still running); None when the
        cache is off or ``warm_users`` is 0."""
        cache = service.live.cache
        if cache is None or cache.warm_users <= 0:
            return None
        with self._lock:
            self._generation += 1
            generation = self._generation
        thread = threading.Thread(
            target=self._run, args=(service, generation), name="cache-warmup", daemon=True
        )
        self.thread = thread
        thread.start()
        return thread

    def stop(self) -> None:
        """End any warm-up (the process is shutting down); it stops before its next reader."""
        with self._lock:
            self._generation += 1
        if self.thread is not None:
            self.thread.join(timeout=5)

    def _current(self, service: RecommendationService, generation: int) -> bool:
        return generation == self._generation and self.core.service is service

    def _run(self, service: RecommendationService, generation: int) -> None:
        cache = service.live.cache
        assert cache is not None
        started = time.monotonic()
        deadline = started + cache.warm_seconds
        request = RecommendRequest.model_validate({})
        warmed, complete = 0, True
        try:
            for user in most_active(service, cache.warm_users):
                if time.monotonic() > deadline or not self._current(service, generation):
                    complete = False
                    break
                self._yield_to_requests(service, deadline)
                warmed += self._warm_one(service, user, request)
        except Exception:  # never take the process down: the cache fills from requests
            log.exception("cache warm-up of %s stopped", service.version)
            complete = False
        seconds = time.monotonic() - started
        self.last = WarmUp(service.version, warmed, seconds, complete)
        self.core.metrics.warmed.labels(service.version).inc(warmed)
        log.info("cache warm-up of %s: %d readers in %.1f s", service.version, warmed, seconds)

    @staticmethod
    def _yield_to_requests(service: RecommendationService, deadline: float) -> None:
        """Wait while requests queue for the model (live traffic first)."""
        while service.pending() > 0 and time.monotonic() < deadline:
            time.sleep(0.005)

    def _warm_one(self, service: RecommendationService, user: str, request: Any) -> int:
        """Cache ``user``'s default list as a request would (1), or leave it (0): in an
        experiment, cached already, or a transient fallback."""
        cache = service.live.cache
        assert cache is not None
        arm = self.core.experiments.assign(user, None)
        if arm.experiment is not None or arm.service is not service:
            return 0
        params = user_params(request, None, None, service.live.rules.version)
        if cache.get(service.version, user, params)[0] is not None:
            return 0
        started = time.perf_counter()
        answer = service.for_user(user, request.limit, request.exclude, request.filters)
        if answer.fallback_reason in TRANSIENT:
            return 0
        response = self.core.shape(service, answer, started, "warm-up")
        cache.put(service.version, user, params, response.model_dump_json())
        return 1
