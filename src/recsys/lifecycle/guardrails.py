"""Canary guardrails: a canary bundle's live answers against production's over the same
window, and the decision — advance to the next traffic step, hold (too little traffic to
judge), or roll back with the reasons.

Both arms are :class:`ArmStats`: what the serving processes count per answering bundle
(``recsys_bundle_answers_total``, ``recsys_bundle_latency_seconds``, clicked impressions),
summed over processes and taken as the difference between the step's end and its start.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from prometheus_client import CollectorRegistry


@dataclass(frozen=True)
class ArmStats:
    """One bundle's user recommendations over a window.

    ``buckets``: cumulative latency histogram, (upper bound in seconds, count) ascending, the
    last bound ``inf``.
    """

    answers: int = 0
    errors: int = 0
    fallbacks: int = 0
    buckets: tuple[tuple[float, int], ...] = ()
    impressions: int = 0
    clicks: int = 0

    def __add__(self, other: ArmStats) -> ArmStats:
        return self._combine(other, 1)

    def __sub__(self, other: ArmStats) -> ArmStats:
        return self._combine(other, -1)

    def _combine(self, other: ArmStats, sign: int) -> ArmStats:
        mine, theirs = dict(self.buckets), dict(other.buckets)
        bounds = sorted(set(mine) | set(theirs))
        return ArmStats(
            answers=self.answers + sign * other.answers,
            errors=self.errors + sign * other.errors,
            fallbacks=self.fallbacks + sign * other.fallbacks,
            buckets=tuple((b, mine.get(b, 0) + sign * theirs.get(b, 0)) for b in bounds),
            impressions=self.impressions + sign * other.impressions,
            clicks=self.clicks + sign * other.clicks,
        )

    @property
    def error_rate(self) -> float:
        return self.errors / self.answers if self.answers else 0.0

    @property
    def fallback_rate(self) -> float:
        return self.fallbacks / self.answers if self.answers else 0.0

    def quantile(self, q: float) -> float:
        """The latency under which ``q`` of the answers fell: the upper bound of the bucket
        holding that rank (conservative, as Prometheus's histogram_quantile is at the top)."""
        total = self.buckets[-1][1] if self.buckets else 0
        return self._at_rank(q * total) if total > 0 else 0.0

    def tail(self, q: float = 0.99) -> float:
        """The ``q`` quantile of latency, except that it never reads the slowest answer alone:
        below ``1 / (1 - q)`` answers (100 for p99), a sample's p99 *is* its slowest answer,
        and one stalled answer (a collector pause, a store write waiting on a lock, a busy
        machine) is no evidence against a bundle. Such an arm reads the answer below its
        slowest; an arm with enough answers reads its plain ``q`` quantile."""
        total = self.buckets[-1][1] if self.buckets else 0
        if total < 2:
            return self.quantile(q)
        return self._at_rank(min(q * total, total - 1))

    def _at_rank(self, rank: float) -> float:
        finite = [bound for bound, _ in self.buckets if bound != float("inf")]
        for bound, count in self.buckets:
            if count >= rank:
                return bound if bound != float("inf") else (finite[-1] if finite else 0.0)
        return finite[-1] if finite else 0.0


@dataclass(frozen=True)
class Guardrails:
    """When a canary step may advance. Rates are compared as differences (canary minus
    production), latency as a ratio of p99s, click-through by the 95% interval of the
    difference (only with ``min_impressions`` on both arms)."""

    min_answers: int = 50
    max_error_rate_increase: float = 0.01
    max_fallback_rate_increase: float = 0.05
    max_p99_ratio: float = 1.5
    p99_floor_s: float = 0.05  # p99s below this are equal (bucket noise on fast answers)
    min_impressions: int = 200


@dataclass(frozen=True)
class Verdict:
    action: Literal["advance", "hold", "rollback"]
    reasons: tuple[str, ...]
    rows: list[dict[str, Any]] = field(default_factory=list)


def judge(canary: ArmStats, production: ArmStats, rules: Guardrails) -> Verdict:
    """Advance, hold or roll back, with one row per guardrail."""
    if canary.answers < rules.min_answers:
        return Verdict("hold", (f"{canary.answers} canary answers < {rules.min_answers}",))
    rows = [
        _row(
            "error rate",
            canary.error_rate,
            production.error_rate,
            canary.error_rate - production.error_rate <= rules.max_error_rate_increase,
            f"<= production + {rules.max_error_rate_increase}",
        ),
        _row(
            "fallback rate",
            canary.fallback_rate,
            production.fallback_rate,
            canary.fallback_rate - production.fallback_rate <= rules.max_fallback_rate_increase,
            f"<= production + {rules.max_fallback_rate_increase}",
        ),
    ]
    p99 = max(canary.tail(0.99), rules.p99_floor_s)
    base = max(production.tail(0.99), rules.p99_floor_s)
    rows.append(
        _row(
            "p99 latency s",
            canary.tail(0.99),
            production.tail(0.99),
            p99 <= rules.max_p99_ratio * base,
            f"<= {rules.max_p99_ratio} x production",
        )
    )
    if min(canary.impressions, production.impressions) >= rules.min_impressions:
        from recsys.serving.experiments import ctr_report  # (imports torch: only when needed)

        ctr = ctr_report(
            {
                "production": (production.impressions, production.clicks),
                "canary": (canary.impressions, canary.clicks),
            },
            control="production",
        )
        high = ctr["canary"]["diff_95_high"]
        rows.append(
            _row(
                "click-through",
                ctr["canary"]["ctr"],
                ctr["production"]["ctr"],
                high >= 0,
                "difference's 95% interval reaches 0 or above",
            )
        )
    failed = tuple(
        f"{r['guardrail']}: canary {r['canary']:.4g} vs production "
        f"{r['production']:.4g} (must be {r['rule']})"
        for r in rows
        if not r["pass"]
    )
    return Verdict("rollback" if failed else "advance", failed, rows)


def _row(name: str, canary: float, production: float, ok: bool, rule: str) -> dict[str, Any]:
    return {"guardrail": name, "canary": canary, "production": production, "rule": rule, "pass": ok}


def arm_stats(registry: CollectorRegistry) -> dict[str, ArmStats]:
    """Per answering bundle, from one serving process's Prometheus registry (cumulative since
    it started): what it reports to the model registry for a canary's guardrails."""
    answers: dict[str, dict[str, int]] = {}
    buckets: dict[str, list[tuple[float, int]]] = {}
    shown: dict[str, list[int]] = {}
    for metric in registry.collect():
        for sample in metric.samples:
            bundle = sample.labels.get("bundle")
            if bundle is None:
                continue
            value = int(sample.value)
            if sample.name == "recsys_bundle_answers_total":
                answers.setdefault(bundle, {})[sample.labels["outcome"]] = value
            elif sample.name == "recsys_bundle_latency_seconds_bucket":
                buckets.setdefault(bundle, []).append((float(sample.labels["le"]), value))
            elif sample.name == "recsys_experiment_impressions_total":
                shown.setdefault(bundle, [0, 0])[0] += value
            elif sample.name == "recsys_experiment_clicked_impressions_total":
                shown.setdefault(bundle, [0, 0])[1] += value
    out = {}
    for bundle in set(answers) | set(shown):
        counts = answers.get(bundle, {})
        impressions, clicks = shown.get(bundle, [0, 0])
        out[bundle] = ArmStats(
            answers=sum(counts.values()),
            errors=counts.get("error", 0),
            fallbacks=counts.get("fallback", 0),
            buckets=tuple(sorted(buckets.get(bundle, []))),
            impressions=impressions,
            clicks=clicks,
        )
    return out


def to_json(stats: ArmStats) -> dict[str, Any]:
    return {**asdict(stats), "buckets": [[b, n] for b, n in stats.buckets]}


def from_json(raw: dict[str, Any]) -> ArmStats:
    return ArmStats(**{**raw, "buckets": tuple((float(b), int(n)) for b, n in raw["buckets"])})
