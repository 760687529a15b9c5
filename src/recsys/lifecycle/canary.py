"""Canary promotion: a version takes a growing share of traffic (the servers that follow the
registry split users by stable hash, as an experiment ``canary:<family>``), and before each
step the guardrails compare its live answers with production's over the same window. A
healthy canary reaches 100 % and becomes production; a worse one is rolled back at once (all
traffic to production) and marked rejected with the reasons. Every decision is logged in the
registry (``recsys models show`` lists them)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from recsys.errors import RecsysError
from recsys.lifecycle.canaries import window
from recsys.lifecycle.guardrails import Guardrails, Verdict, judge
from recsys.lifecycle.registry import Registry


@dataclass(frozen=True)
class CanaryPlan:
    """``steps``: traffic percentages, ascending, ending at 100 (= promote). ``step_s``: how
    long each step runs before it is judged. ``settle_s``: the wait after a change, so every
    server applies it (a few registry polls). A step with too little traffic to judge is
    extended up to ``max_holds`` times, then rolled back."""

    steps: tuple[float, ...] = (10.0, 25.0, 50.0, 100.0)
    step_s: float = 600.0
    settle_s: float = 10.0
    max_holds: int = 3
    rules: Guardrails = field(default_factory=Guardrails)

    def __post_init__(self) -> None:
        steps = list(self.steps)
        if not steps or steps != sorted(steps) or steps[-1] != 100 or steps[0] <= 0:
            raise RecsysError(
                f"canary steps {steps}: ascending percentages ending at 100, e.g. "
                "'canary=[10,25,50,100]'."
            )


@dataclass(frozen=True)
class Outcome:
    promoted: bool
    reasons: tuple[str, ...] = ()


def run_canary(
    registry: Registry,
    family: str,
    version: str,
    plan: CanaryPlan,
    actor: str,
    report: Callable[[float, Verdict], None] = lambda _p, _v: None,
    sleep: Callable[[float], None] = time.sleep,
) -> Outcome:
    """Take ``version`` through ``plan``; ``report`` sees each step's verdict."""
    target = registry.promotable(family, version)
    production = registry.production(family)
    if production is None or production.version == version:
        registry.promote(family, version, actor, "no production to compare with: promoted")
        return Outcome(True)
    try:
        for percent in plan.steps[:-1]:
            verdict = _step(
                registry,
                target.path,
                family,
                version,
                production.version,
                percent,
                plan,
                actor,
                report,
                sleep,
            )
            if verdict.action != "advance":
                reasons = verdict.reasons or ("not enough traffic to judge",)
                registry.end_canary(family)
                registry.reject(
                    family, version, [f"canary at {percent:g}%: {r}" for r in reasons], actor
                )
                return Outcome(False, tuple(reasons))
        registry.promote(family, version, actor, "canary passed every step")
        return Outcome(True)
    finally:
        registry.end_canary(family)


def _step(
    registry: Registry,
    path: str,
    family: str,
    version: str,
    production: str,
    percent: float,
    plan: CanaryPlan,
    actor: str,
    report: Callable[[float, Verdict], None],
    sleep: Callable[[float], None],
) -> Verdict:
    """One traffic step: set the share, let servers apply it, measure, judge (holding while
    there is too little traffic)."""
    registry.set_canary(family, version, path, percent, actor)
    registry.log(family, version, "canary_step", {"percent": percent}, actor)
    sleep(plan.settle_s)
    start = registry.server_stats()
    for _ in range(plan.max_holds + 1):
        sleep(plan.step_s)
        end = registry.server_stats()
        verdict = judge(window(start, end, version), window(start, end, production), plan.rules)
        details: dict[str, Any] = {
            "percent": percent,
            "reasons": list(verdict.reasons),
            "rows": verdict.rows,
        }
        registry.log(family, version, f"canary_{verdict.action}", details, actor)
        report(percent, verdict)
        if verdict.action != "hold":
            return verdict
    return verdict
