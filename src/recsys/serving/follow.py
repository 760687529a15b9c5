"""Serving follows the model registry: a thread polls the family's production version and, when
it changes, hot-swaps to it through the serving core (the one swap: load and verify first, a
refused bundle leaves the current one serving). Each poll also sends the server's heartbeat
(the versions it serves), which retention honours. Promotion and rollback both move the
production pointer, so both reach every following server within a poll."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Protocol, TypeVar

from recsys.errors import RecsysError
from recsys.lifecycle import Registry, open_registry
from recsys.lifecycle.guardrails import ArmStats

log = logging.getLogger(__name__)
T = TypeVar("T")
RETRY_REFUSED_S = 30.0  # a production version that failed to load is tried again this late


class RegistryOff(RecsysError):
    """A registry operation on a server that follows none (HTTP 409)."""


class Followed(Protocol):
    """What the follower drives (:class:`recsys.serving.core.ServingCore`)."""

    def swap(self, path: str) -> bool: ...

    def serving(self) -> list[tuple[str, str]]:
        """(family, version) of the default bundle first, then the variants' bundles."""
        ...

    def set_canary(self, family: str, path: str | None, percent: float) -> None: ...

    def stats(self) -> dict[str, ArmStats]: ...


def server_id() -> str:
    """This process, uniquely: host, pid and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class ProductionFollower:
    """Keep ``core``'s default bundle on ``family``'s production version in the registry at
    ``url`` (polled every ``poll_s``; :meth:`check` polls now). An unreachable registry is
    logged and retried; the server keeps serving what it has."""

    def __init__(
        self,
        core: Followed,
        url: str,
        family: str,
        poll_s: float = 2.0,
        opener: Callable[[str], Registry] = open_registry,
    ) -> None:
        self.core, self.url, self.family, self.poll_s = core, url, family, poll_s
        self.opener = opener
        self.server_id = server_id()
        self.applied: str | None = None  # the production version last switched to
        self.canary: tuple[str, float] | None = None  # (version, percent) applied
        self.error: str | None = None
        self._retry_at: dict[str, float] = {}
        self._registry: Registry | None = None
        self._lock = threading.Lock()
        self._opening = threading.Lock()  # the registry handle is opened once
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="registry-follow", daemon=True)
        self._thread.start()

    def check(self) -> bool:
        """Swap to production if it moved, then send the heartbeat; returns whether it
        switched."""
        with self._lock:
            try:
                switched = self._follow()
                self._follow_canary()
                registry = self._registry_now()
                registry.heartbeat(self.server_id, self.core.serving(), self.poll_s)
                registry.report_stats(self.server_id, self.core.stats())
                self.error = None
                return switched
            except Exception as exc:  # the registry down or broken: keep serving, try again
                if str(exc) != self.error:
                    log.error("model registry %s: %s", self.family, exc)
                self.error = str(exc)
                return False

    def with_registry(self, act: Callable[[Registry], T]) -> T:
        """``act(registry)`` on this follower's registry handle: what the console reads and
        changes. Not under the poll's lock (held through a bundle swap); the handle's
        database engine is safe to share between threads."""
        return act(self._registry_now())

    def _follow(self) -> bool:
        production = self._registry_now().production(self.family)
        if production is None or production.version == self.applied:
            return False
        if self.core.serving()[0][1] == production.version:  # started on it, or swapped to it
            self.applied = production.version
            return False
        if time.monotonic() < self._retry_at.get(production.version, 0.0):
            return False
        if self.core.swap(production.path):
            self.applied = production.version
            log.info("following %s production: %s", self.family, production.version)
            return True
        # refused (logged and counted by the swap): not again on every poll
        self._retry_at[production.version] = time.monotonic() + RETRY_REFUSED_S
        return False

    def _follow_canary(self) -> None:
        """Apply the family's canary (version and share) when it changed, or end it."""
        canary = self._registry_now().canary(self.family)
        wanted = None if canary is None else (canary.version, canary.percent)
        if wanted == self.canary:
            return
        if canary is None:
            self.core.set_canary(self.family, None, 0.0)
        else:  # a bundle that fails to load raises: retried next poll, logged once
            self.core.set_canary(self.family, canary.path, canary.percent)
        self.canary = wanted
        log.info("%s canary: %s", self.family, wanted)

    def _registry_now(self) -> Registry:
        with self._opening:
            if self._registry is None:
                self._registry = self.opener(self.url)
            return self._registry

    def _run(self) -> None:
        self.check()
        while not self._stop.wait(self.poll_s):
            self.check()

    def stop(self) -> None:
        """Stop polling and withdraw the heartbeat (this server no longer uses anything)."""
        self._stop.set()
        self._thread.join(timeout=self.poll_s + 10)
        with self._lock:
            if self._registry is not None:
                try:
                    self._registry.forget(self.server_id)
                except Exception as exc:  # it goes stale by itself
                    log.warning("could not withdraw the heartbeat: %s", exc)
                self._registry.close()
