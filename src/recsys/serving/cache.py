"""Two-level response cache: in-process LRU (level 1) and Redis (level 2, optional).

Entries are grouped per user: key ``recsys:<bundle version>:user:<user id>`` holds a hash of
``request-parameters digest -> response JSON``. An event for a user deletes that user's group
(one key in Redis); a bundle swap changes the version in every key, so nothing cached for the
old bundle is ever read again (and it expires by TTL). With Redis, replicas share level 2; a
replica's level 1 may serve an entry up to ``l1_ttl_s`` after another replica invalidated it,
so keep ``l1_ttl_s`` short when several replicas run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import OrderedDict
from typing import Any

from recsys.breaker import TIMEOUT_S, Breaker

log = logging.getLogger(__name__)


def digest(params: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:24]


def user_params(
    request: Any, experiment: str | None, variant: str | None, rules: str
) -> dict[str, Any]:
    """What a user's cached list is keyed on besides the bundle: the request, the experiment
    arm and the business rules' version (a new rules file: lists made again). The one
    definition requests and the warm-up share."""
    return {
        **request.model_dump(mode="json"),
        "experiment": experiment,
        "variant": variant,
        "rules": rules,
    }


class ResponseCache:
    """Args:
    ttl_s: entry lifetime (Redis and level 1 without Redis).
    l1_ttl_s: level-1 lifetime when Redis is configured.
    max_users: level-1 capacity in users (least recently used evicted).
    redis_url: ``redis://host:port/db``; None keeps level 1 only (the embedded default).
    warm_users: readers whose default list a warm-up caches (:mod:`recsys.serving.warmup`).
    warm_seconds: time bound of one warm-up.
    """

    def __init__(
        self,
        ttl_s: float = 3600.0,
        l1_ttl_s: float = 10.0,
        max_users: int = 100_000,
        redis_url: str | None = None,
        warm_users: int = 0,
        warm_seconds: float = 10.0,
    ) -> None:
        self.ttl_s, self.max_users = ttl_s, max_users
        self.warm_users, self.warm_seconds = warm_users, warm_seconds
        self.l1_ttl_s = l1_ttl_s if redis_url else ttl_s
        self._l1: OrderedDict[str, dict[str, tuple[float, str]]] = OrderedDict()
        # user id -> their level-1 groups (one per bundle version): an event drops a user's
        # entries without scanning the whole level 1 (a scan per event grew with the cache
        # and, under sustained load, took the model thread's time)
        self._groups: dict[str, set[str]] = {}
        self._lock = threading.Lock()
        self.redis: Any = None
        self.breaker = Breaker("redis-cache")
        if redis_url:
            import redis

            self.redis = redis.Redis.from_url(
                redis_url, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S
            )

    @property
    def shared(self) -> bool:
        """Level 2 is configured and not cooling down after a failure."""
        return self.redis is not None and self.breaker.available

    @staticmethod
    def group(version: str, user_id: str) -> str:
        return f"recsys:{version}:user:{user_id}"

    def get(self, version: str, user_id: str, params: dict[str, Any]) -> tuple[str | None, str]:
        """(cached JSON or None, where: ``l1``, ``l2`` or ``miss``)."""
        group, field = self.group(version, user_id), digest(params)
        now = time.monotonic()
        with self._lock:
            entries = self._l1.get(group)
            if entries is not None:
                self._l1.move_to_end(group)
                hit = entries.get(field)
                if hit is not None and hit[0] > now:
                    return hit[1], "l1"
        if self.shared:
            try:
                value = self.redis.hget(group, field)
            except Exception as exc:  # Redis down: serve without level 2
                self.breaker.failed(exc)
                return None, "miss"
            if value is not None:
                text = value.decode()
                self._put_l1(group, field, text, now)
                return text, "l2"
        return None, "miss"

    def put(self, version: str, user_id: str, params: dict[str, Any], value: str) -> None:
        group, field = self.group(version, user_id), digest(params)
        self._put_l1(group, field, value, time.monotonic())
        if self.shared:
            try:
                pipe = self.redis.pipeline()
                pipe.hset(group, field, value)
                pipe.expire(group, int(self.ttl_s))
                pipe.execute()
            except Exception as exc:
                self.breaker.failed(exc)

    def _put_l1(self, group: str, field: str, value: str, now: float) -> None:
        with self._lock:
            entries = self._l1.get(group)
            if entries is None:
                entries = self._l1[group] = {}
                self._groups.setdefault(_user_of(group), set()).add(group)
            entries[field] = (now + self.l1_ttl_s, value)
            self._l1.move_to_end(group)
            while len(self._l1) > self.max_users:
                evicted, _ = self._l1.popitem(last=False)
                self._forget(evicted)

    def _forget(self, group: str) -> None:
        """Drop ``group`` from its user's set (the lock is held)."""
        user = _user_of(group)
        groups = self._groups.get(user)
        if groups is not None:
            groups.discard(group)
            if not groups:
                del self._groups[user]

    def invalidate_user(self, user_id: str, version: str | None = None) -> None:
        """Drop cached answers for ``user_id``: of bundle ``version`` in Redis (one key: what
        an event needs), or of every version (a scan: what an erasure needs). Level 1 drops
        every version either way."""
        with self._lock:
            for group in self._groups.pop(user_id, ()):
                self._l1.pop(group, None)
        if self.redis is not None:  # tried even while cooling down: stale answers are worse
            try:
                if version is not None:
                    self.redis.delete(self.group(version, user_id))
                    return
                keys = list(self.redis.scan_iter(match=f"recsys:*:user:{_escape(user_id)}"))
                if keys:
                    self.redis.delete(*keys)
            except Exception as exc:
                self.breaker.failed(exc)
                log.warning("redis unavailable (%s); level-2 entries expire by TTL", exc)

    def clear(self) -> None:
        """Level 1 only: a bundle swap makes level-2 keys unreachable by version."""
        with self._lock:
            self._l1.clear()
            self._groups.clear()

    def l1_users(self) -> list[str]:
        with self._lock:
            return list(self._l1)


def _user_of(group: str) -> str:
    """The user id of a ``recsys:<version>:user:<user id>`` group (versions never hold
    ``:user:``; user ids may)."""
    return group.split(":user:", 1)[1]


def _escape(text: str) -> str:
    """Escape Redis glob characters."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
