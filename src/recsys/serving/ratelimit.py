"""Request rate limits per caller (token subject, else client address) and endpoint, with the
`limits` library: a moving window in process memory, or in Redis so replicas share counts."""

from __future__ import annotations

import math
import time
from typing import Any

from limits import RateLimitItem, parse
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from recsys.breaker import TIMEOUT_S, Breaker
from recsys.errors import RecsysError


class RateLimited(RecsysError):
    """HTTP 429."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RateLimiter:
    """Args:
    default: limit of every endpoint (``1000/minute``, the design's per-user budget).
    endpoints: overrides by route path, e.g. ``{"/events": "6000/minute"}``.
    redis_url: shared counters; None keeps them in this process.

    With Redis, every call has a 50 ms timeout; while Redis is unreachable (and for a
    cool-down after each failure, see :class:`Breaker`) the counts fall back to this process's
    memory: limits still hold per replica and no request fails. The request path counts in
    Redis from a worker thread (``recsys.serving.deps``), so the event loop never waits on it.
    """

    def __init__(
        self,
        default: str = "1000/minute",
        endpoints: dict[str, str] | None = None,
        redis_url: str | None = None,
    ) -> None:
        try:
            self.default: RateLimitItem = parse(default)
            self.endpoints = {path: parse(limit) for path, limit in (endpoints or {}).items()}
        except ValueError as exc:
            raise RecsysError(f"bad rate limit ({exc}); write e.g. 1000/minute.") from None
        self.local = MovingWindowRateLimiter(storage_from_string("memory://"))
        self.shared: MovingWindowRateLimiter | None = None
        self.breaker = Breaker("redis-rate-limits")
        if redis_url:
            storage = storage_from_string(
                redis_url, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S
            )
            self.shared = MovingWindowRateLimiter(storage)

    @classmethod
    def from_config(cls, cfg: dict[str, Any] | None) -> RateLimiter | None:
        cfg = dict(cfg or {})
        if not cfg.get("enabled", True):
            return None
        return cls(
            str(cfg.get("default", "1000/minute")),
            dict(cfg.get("endpoints") or {}),
            cfg.get("redis_url"),
        )

    @property
    def remote(self) -> bool:
        """Counts go to Redis (configured and not cooling down after a failure)."""
        return self.shared is not None and self.breaker.available

    def check(self, identity: str, endpoint: str) -> None:
        """Count one request; raise RateLimited (with seconds to wait) over the limit."""
        item = self.endpoints.get(endpoint, self.default)
        limiter = self.local
        if self.shared is not None and self.breaker.available:
            try:
                if self.shared.hit(item, identity, endpoint):
                    return
                limiter = self.shared
            except Exception as exc:  # Redis down or frozen: count in this process
                self.breaker.failed(exc)
        if limiter is self.local and self.local.hit(item, identity, endpoint):
            return
        reset = limiter.get_window_stats(item, identity, endpoint).reset_time
        wait = max(1, math.ceil(reset - time.time()))
        raise RateLimited(f"rate limit {item} exceeded for {endpoint}; retry in {wait} s", wait)
