"""A circuit breaker for optional dependencies (Redis): after a failure the dependency is
skipped for a cool-down, so an outage costs one short timeout per cool-down instead of one per
request, and it is retried by itself afterwards. Errors are counted for ``/metrics``."""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger(__name__)

TIMEOUT_S = 0.05  # socket connect/read timeout towards an optional dependency


class Breaker:
    """Args:
    name: what it guards (``redis-cache``, ``redis-rate-limits``), for logs and metrics.
    cooldown_s: how long a failure keeps the dependency skipped.
    """

    def __init__(self, name: str, cooldown_s: float = 5.0) -> None:
        self.name, self.cooldown_s = name, cooldown_s
        self.errors = 0
        self._open_until = 0.0
        self._lock = threading.Lock()

    @property
    def available(self) -> bool:
        """False while cooling down after a failure."""
        return time.monotonic() >= self._open_until

    def failed(self, exc: BaseException) -> None:
        with self._lock:
            self.errors += 1
            first = self.available
            self._open_until = time.monotonic() + self.cooldown_s
        if first:
            log.warning("%s unavailable (%s); skipped for %.0f s", self.name, exc, self.cooldown_s)
