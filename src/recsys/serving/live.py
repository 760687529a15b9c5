"""What serving keeps beyond the bundle: stores, trending and the response cache.

Process-level (not tied to a bundle version): a hot swap hands the same ``Live`` to the new
service, clears level 1 of the cache, and the bundle version in cache keys retires the rest.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from recsys.breaker import Breaker
from recsys.serving.auth import Authenticator
from recsys.serving.cache import ResponseCache
from recsys.serving.experiments import ImpressionLog
from recsys.serving.ratelimit import RateLimiter
from recsys.serving.rules import RulesHolder
from recsys.serving.settings import (
    ExplorationSettings,
    LiveSettings,
    MonitoringSettings,
    RegistrySettings,
    validated,
)
from recsys.serving.trending import Trending
from recsys.stores import Stores, StoreUnavailable, null_stores, open_store


@dataclass
class Live:
    """Process-level serving resources. ``Live()`` built in code (tests, notebooks, batch
    jobs) serves the bundle alone with no HTTP auth; :meth:`from_config` builds what the
    settings say (auth on unless ``auth.enabled`` is false)."""

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
    monitoring: MonitoringSettings = field(default_factory=MonitoringSettings)
    registry: RegistrySettings = field(default_factory=RegistrySettings)  # url None: off
    rules_file: str | None = None  # watched YAML (recsys.serving.rules)
    rules_poll_s: float = 1.0
    rules: RulesHolder = field(default_factory=RulesHolder)  # the business rules in force
    # exploration slots for new books; off unless configured (recsys serve turns it on)
    exploration: ExplorationSettings = field(default_factory=ExplorationSettings)
    explorations: ImpressionLog | None = None  # their propensities, written in the background

    _rebuilding: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.stores.persistent and self.impressions is None:
            self.impressions = ImpressionLog(self.stores.experiments)
        if self.stores.persistent and self.explorations is None:
            experiments = self.stores.experiments
            self.explorations = ImpressionLog(experiments, write=experiments.log_explorations)

    def refresh_trending(self, force: bool = False) -> None:
        """Rebuild trending from the store when it is older than ``refresh_s``: in a
        background thread (requests keep the current scores meanwhile), or now with
        ``force``."""
        trending = self.trending
        if trending is None:
            return
        now = time.time()
        if force:
            self._rebuild_trending(now)
        elif now - trending.built_at >= self.refresh_s and self._rebuilding.acquire(False):
            threading.Thread(
                target=self._rebuild_trending, args=(now, True), daemon=True, name="trending"
            ).start()

    def _rebuild_trending(self, now: float, release: bool = False) -> None:
        assert self.trending is not None
        try:
            recent = list(self.stores.events.recent(now - self.trending.window_s))
            self.trending.rebuild(recent, now)
        except StoreUnavailable:  # keep the current scores until the store is back
            self.trending.built_at = now  # and try again in refresh_s, not every request
        finally:
            if release:
                self._rebuilding.release()

    def breakers(self) -> list[Breaker]:
        """The circuit breakers of the Redis-backed parts (for ``/metrics``)."""
        out = [self.stores.db.breaker] if self.stores.db is not None else []
        if self.cache is not None and self.cache.redis is not None:
            out.append(self.cache.breaker)
        if self.limiter is not None and self.limiter.shared is not None:
            out.append(self.limiter.breaker)
        return out

    def close(self) -> None:
        if self.impressions is not None:
            self.impressions.close()
        if self.explorations is not None:
            self.explorations.close()
        self.stores.close()

    @classmethod
    def from_config(cls, cfg: LiveSettings | dict[str, Any]) -> Live:
        """From the live settings (or their plain-data form: the ``store``, ``trending``,
        ``cache``, ``auth``, ``rate_limits``, ``experiments``, ``monitoring``, ``registry``
        sections of the serve config)."""
        settings = (
            cfg
            if isinstance(cfg, LiveSettings)
            else validated(LiveSettings, cfg, "serving setting")
        )
        trend, cache, limits = settings.trending, settings.cache, settings.rate_limits
        live = cls(
            open_store(settings.store.url, settings.store.history_types),
            Trending(half_life_s=trend.half_life_hours * 3600, window_s=trend.window_days * 86400),
            ResponseCache(
                ttl_s=cache.ttl_s,
                l1_ttl_s=cache.l1_ttl_s,
                max_users=cache.max_users,
                redis_url=cache.redis_url,
                warm_users=cache.warm_users,
                warm_seconds=cache.warm_seconds,
            )
            if cache.enabled
            else None,
            trend.refresh_s,
            Authenticator.from_config(settings.auth.model_dump()),
            RateLimiter.from_config(limits.model_dump())
            if (limits := settings.rate_limits)
            else None,
            settings.max_body_bytes,
            settings.experiments.file,
            settings.experiments.poll_s,
            monitoring=settings.monitoring,
            registry=settings.registry,
            rules_file=settings.rules.file,
            rules_poll_s=settings.rules.poll_s,
            exploration=settings.exploration,
        )
        live.refresh_trending(force=True)
        return live
