"""The evaluation gate a retrained candidate passes before it may replace production.

Rules (``gate:`` in ``configs/retrain.yaml``), each giving one row of the report:

- ``relative``: metric -> ratio; the candidate's holdout value must be at least ``ratio`` times
  production's on the same holdout (passes with a note when there is no production);
- ``floors``: metric -> value; the candidate's holdout value must be at least ``value``;
- ``max_p99_ms``: the candidate's in-process p99 latency of one user's list, at most this;
- ``verify``: the candidate bundle loads and verifies (schema, every file's checksum).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from recsys.errors import RecsysError
from recsys.lifecycle.compare import HoldoutScore

# the metric families recsys.evaluation.evaluate reports at each cut-off
METRICS = ("recall", "ndcg", "precision", "hit_rate", "mrr", "coverage", "novelty", "diversity")


@dataclass(frozen=True)
class GateRules:
    """What a candidate must show (see the module docstring)."""

    relative: Mapping[str, float] = field(default_factory=dict)
    floors: Mapping[str, float] = field(default_factory=dict)
    max_p99_ms: float | None = None
    verify: bool = True

    def check(self, ks: Iterable[int]) -> None:
        """Raise RecsysError naming a rule's metric that the evaluation does not report."""
        known = {f"{name}@{k}" for name in METRICS for k in ks}
        for section, rules in (("relative", self.relative), ("floors", self.floors)):
            for metric in rules:
                if metric not in known:
                    raise RecsysError(
                        f"gate.{section} names '{metric}', which the holdout evaluation does "
                        f"not report; use one of {sorted(known)} (cut-offs from eval.ks)."
                    )


@dataclass(frozen=True)
class RuleResult:
    """One row of the gate: a rule, the values it compared and whether it held."""

    rule: str
    candidate: float | str | None
    production: float | str | None
    threshold: float | None
    passed: bool
    note: str = ""

    def reason(self) -> str:
        """Why the rule failed, in one line."""
        parts = [f"candidate {_fmt(self.candidate)}"]
        if self.production is not None:
            parts.append(f"production {_fmt(self.production)}")
        if self.threshold is not None:
            parts.append(f"threshold {_fmt(self.threshold)}")
        note = f"; {self.note}" if self.note else ""
        return f"{self.rule}: {', '.join(parts)}{note}"


@dataclass(frozen=True)
class GateResult:
    """Every rule's row; the candidate passes when all of them hold."""

    rows: tuple[RuleResult, ...]

    @property
    def passed(self) -> bool:
        return all(row.passed for row in self.rows)

    @property
    def reasons(self) -> tuple[str, ...]:
        return tuple(row.reason() for row in self.rows if not row.passed)

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "reasons": list(self.reasons),
            "rows": [asdict(row) for row in self.rows],
        }


def judge(
    rules: GateRules,
    candidate: HoldoutScore | None,
    production: HoldoutScore | None,
    verify_error: str | None = None,
) -> GateResult:
    """Apply ``rules`` to the candidate's holdout score against production's.

    Args:
        rules: the gate.
        candidate: the candidate's score; None when it could not be scored (it did not
            verify), which fails every other rule.
        production: production's score on the same holdout; None without a production.
        verify_error: why the candidate bundle did not verify, None when it did.
    """
    rows = []
    if rules.verify:
        status = "failed" if verify_error else "ok"
        ok = verify_error is None
        rows.append(RuleResult("bundle verifies", status, None, None, ok, verify_error or ""))
    for metric, ratio in rules.relative.items():
        rows.append(_relative(metric, ratio, candidate, production))
    for metric, floor in rules.floors.items():
        rows.append(_at_least(f"{metric} ≥ {floor:g}", candidate, production, floor, metric=metric))
    if rules.max_p99_ms is not None:
        limit = rules.max_p99_ms
        p99 = candidate.p99_ms if candidate else None
        prod = production.p99_ms if production else None
        ok = p99 is not None and p99 <= limit
        note = _missing(candidate, p99)
        rows.append(RuleResult(f"p99 latency ≤ {limit:g} ms", p99, prod, limit, ok, note))
    return GateResult(tuple(rows))


def _relative(
    metric: str, ratio: float, candidate: HoldoutScore | None, production: HoldoutScore | None
) -> RuleResult:
    rule = f"{metric} ≥ {ratio:g} × production"
    value = _metric(candidate, metric)
    if production is None:
        return RuleResult(rule, value, None, None, value is not None, "no production to compare")
    prod = _metric(production, metric)
    if prod is None:
        return RuleResult(rule, value, None, None, value is not None, "production lacks it")
    threshold = ratio * prod
    passed = value is not None and value >= threshold
    return RuleResult(rule, value, prod, threshold, passed, _missing(candidate, value))


def _at_least(
    rule: str,
    candidate: HoldoutScore | None,
    production: HoldoutScore | None,
    floor: float,
    metric: str,
) -> RuleResult:
    value = _metric(candidate, metric)
    passed = value is not None and value >= floor
    return RuleResult(
        rule, value, _metric(production, metric), floor, passed, _missing(candidate, value)
    )


def _metric(score: HoldoutScore | None, metric: str) -> float | None:
    if score is None or metric not in score.metrics:
        return None
    return float(score.metrics[metric])


def _missing(candidate: HoldoutScore | None, value: float | None) -> str:
    if candidate is None:
        return "not measured: the candidate did not verify"
    return "not measured on this data" if value is None else ""


def _fmt(value: float | str | None) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)
