"""What serving keeps beyond the bundle: stores, trending and the response cache.

Process-level (not tied to a bundle version): a hot swap hands the same ``Live`` to the new
service, clears level 1 of the cache, and the bundle version in cache keys retires the rest.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from recsys.serving.auth import Authenticator
from recsys.serving.cache import ResponseCache
from recsys.serving.experiments import ImpressionLog
from recsys.serving.ratelimit import RateLimiter
from recsys.serving.trending import Trending
from recsys.stores import Stores, null_stores, open_store


@dataclass
class Live:
    stores: Stores = field(default_factory=null_stores)
    trending: Trending | None = None
    cache: ResponseCache | None = None
    refresh_s: float = 10.0
    auth: Authenticator = field(default_factory=lambda: Authenticator(enabled=False))
    limiter: RateLimiter | None = None
    max_body_bytes: int = 1_000_000
    experiments_file: str | None = None  # watched YAML (recsys.serving.experiments)
    experiments_poll_s: float = 1.0
    impressions: ImpressionLog | None = None

    def __post_init__(self) -> None:
        if self.stores.persistent and self.impressions is None:
            self.impressions = ImpressionLog(self.stores.experiments)

    def refresh_trending(self, force: bool = False) -> None:
        """Rebuild trending from the store when it is older than ``refresh_s``."""
        if self.trending is None:
            return
        now = time.time()
        if force or now - self.trending.built_at >= self.refresh_s:
            self.trending.rebuild(self.stores.events.recent(now - self.trending.window_s), now)

    def close(self) -> None:
        if self.impressions is not None:
            self.impressions.close()
        self.stores.close()

    @classmethod
    def from_config(cls, cfg: Any) -> Live:
        """From the ``store``, ``trending`` and ``cache`` sections of the serve config."""
        store_cfg = cfg.get("store") or {}
        stores = open_store(store_cfg.get("url"), store_cfg.get("history_types"))
        trend = cfg.get("trending") or {}
        trending = Trending(
            half_life_s=float(trend.get("half_life_hours", 6)) * 3600,
            window_s=float(trend.get("window_days", 7)) * 86400,
        )
        cache_cfg = cfg.get("cache") or {}
        cache = None
        if cache_cfg.get("enabled", True):
            cache = ResponseCache(
                ttl_s=float(cache_cfg.get("ttl_s", 3600)),
                l1_ttl_s=float(cache_cfg.get("l1_ttl_s", 10)),
                max_users=int(cache_cfg.get("max_users", 100_000)),
                redis_url=cache_cfg.get("redis_url"),
            )
        # From a config, auth is on unless it says `auth: {enabled: false}` (an explicit
        # choice); without a key configured, HS256 uses a random per-process key. `Live()`
        # built in code (tests, notebooks, batch jobs) has no HTTP auth.
        auth = Authenticator.from_config(cfg.get("auth") or {})
        limiter = (
            RateLimiter.from_config(cfg.get("rate_limits")) if cfg.get("rate_limits") else None
        )
        live = cls(
            stores,
            trending,
            cache,
            float(trend.get("refresh_s", 10)),
            auth,
            limiter,
            int(cfg.get("max_body_bytes", 1_000_000)),
            (cfg.get("experiments") or {}).get("file"),
            float((cfg.get("experiments") or {}).get("poll_s", 1.0)),
        )
        live.refresh_trending(force=True)
        return live
