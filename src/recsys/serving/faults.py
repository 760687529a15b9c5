"""Fault drills for tests and game days, as wrappers: production classes carry no flags.

* :class:`FaultyStages` wraps a service's :class:`~recsys.serving.stages.Stages` in process
  (``service.stages = FaultyStages(service.stages)``).
* :func:`drill_deployment` wraps a Ray stage deployment (``RayAppArgs.drills=true``) with an
  ``inject`` method reachable through its deployment handle.

Either way, ``inject(fail_next=n)`` makes the next ``n`` stage calls raise and
``inject(slow_next_s=s)`` makes the next call sleep ``s`` seconds first.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import scipy.sparse as sp

from recsys.inference.two_stage import Retrieved
from recsys.serving.stages import Stages


class Drill:
    """What the next calls do: raise (``fail_next`` times), or sleep once first."""

    def __init__(self) -> None:
        self.fail_next, self.slow_next_s = 0, 0.0

    def inject(self, fail_next: int = 0, slow_next_s: float = 0.0) -> None:
        self.fail_next, self.slow_next_s = fail_next, slow_next_s

    def run(self, where: str) -> None:
        if self.fail_next:
            self.fail_next -= 1
            raise RuntimeError(f"injected failure in {where}")
        if self.slow_next_s:
            delay, self.slow_next_s = self.slow_next_s, 0.0
            time.sleep(delay)


class FaultyStages(Drill):
    """:class:`Stages` that run a drill before each call of the wrapped stages.

    Args:
        inner: the real stages.
        row_latency_s: extra time per request row of every retrieval (a slow model: a
            capacity of about ``1 / row_latency_s`` requests a second, for overload drills).
    """

    def __init__(self, inner: Stages, row_latency_s: float = 0.0) -> None:
        super().__init__()
        self.inner, self.row_latency_s = inner, row_latency_s
        self.rows = 0  # request rows the model computed

    def retrieve(
        self, users: np.ndarray, history: sp.csr_matrix, social: sp.csr_matrix | None = None
    ) -> Retrieved:
        self.run("retrieval")
        self.rows += len(users)
        if self.row_latency_s:
            time.sleep(self.row_latency_s * len(users))
        return self.inner.retrieve(users, history, social)

    def rank(self, retrieved: Retrieved) -> np.ndarray:
        self.run("ranking")
        return self.inner.rank(retrieved)


def drill_deployment(deployment: Any) -> Any:
    """The same Ray stage deployment with a drill before each batch and an ``inject``
    method (``handle.inject.remote(fail_next=1)``)."""
    from ray import serve

    stage = deployment.func_or_class

    class Drilled(stage):  # type: ignore[misc,valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._faults = Drill()

        def inject(self, fail_next: int = 0, slow_next_s: float = 0.0) -> None:
            self._faults.inject(fail_next, slow_next_s)

        def _run(self, requests: list[Any]) -> Any:
            self._faults.run(deployment.name)
            return super()._run(requests)

    Drilled.__name__ = Drilled.__qualname__ = stage.__name__
    return serve.deployment(name=deployment.name)(Drilled)
