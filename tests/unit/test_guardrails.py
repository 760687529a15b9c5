"""Canary guardrails on planted arm statistics, and the statistics read from a real serving
process's metrics registry."""

from __future__ import annotations

import math

import pytest

from recsys.lifecycle.guardrails import ArmStats, Guardrails, arm_stats, judge
from recsys.serving.metrics import REQUEST_BUCKETS, Metrics

INF = math.inf


def arm(
    answers: int,
    errors: int = 0,
    fallbacks: int = 0,
    slow_share: float = 0.0,
    impressions: int = 0,
    clicks: int = 0,
) -> ArmStats:
    """``answers`` within 10 ms except ``slow_share`` of them at 1 s."""
    slow = round(answers * slow_share)
    buckets = tuple((b, answers - slow if b < 1 else answers) for b in (*REQUEST_BUCKETS, INF))
    return ArmStats(answers, errors, fallbacks, buckets, impressions, clicks)


def test_a_healthy_canary_advances() -> None:
    verdict = judge(arm(500, 1, 5), arm(5000, 10, 50), Guardrails())
    assert verdict.action == "advance"
    assert verdict.reasons == ()
    assert {r["guardrail"] for r in verdict.rows} == {
        "error rate",
        "fallback rate",
        "p99 latency s",
    }


@pytest.mark.parametrize(
    ("canary", "reason"),
    [
        (arm(500, errors=25), "error rate"),
        (arm(500, fallbacks=100), "fallback rate"),
        (arm(500, slow_share=0.05), "p99 latency"),
        (arm(500, impressions=1000, clicks=20), "click-through"),
    ],
)
def test_a_worse_canary_is_rolled_back_with_the_reason(canary: ArmStats, reason: str) -> None:
    production = arm(5000, 10, 50, impressions=10_000, clicks=1000)
    verdict = judge(canary, production, Guardrails())
    assert verdict.action == "rollback"
    assert len(verdict.reasons) == 1
    assert verdict.reasons[0].startswith(reason)


def test_too_little_traffic_holds() -> None:
    verdict = judge(arm(10, errors=10), arm(5000), Guardrails(min_answers=50))
    assert verdict.action == "hold"


def test_click_through_waits_for_enough_impressions() -> None:
    few = judge(
        arm(500, impressions=50, clicks=0),
        arm(5000, impressions=9000, clicks=900),
        Guardrails(min_impressions=200),
    )
    assert few.action == "advance"  # no click-through row yet
    assert "click-through" not in {r["guardrail"] for r in few.rows}


def test_window_arithmetic_and_quantile() -> None:
    start, end = arm(100, 1, 2), arm(600, 3, 7, slow_share=0.5)
    window = end - start
    assert (window.answers, window.errors, window.fallbacks) == (500, 2, 5)
    assert window.quantile(0.4) == 0.001  # 200 fast answers, then 300 at 1 s
    assert window.quantile(0.5) == 1
    assert window.quantile(0.99) == 1
    assert (window + start) == end


def test_arm_stats_from_a_serving_registry() -> None:
    metrics = Metrics()
    for _ in range(8):
        metrics.bundle_answer("v1", "ok", 0.004)
    metrics.bundle_answer("v1", "fallback", 0.3)
    metrics.bundle_answer("v2", "error", 0.002)
    metrics.impressions.labels("canary:books", "canary", "v2").inc(3)
    metrics.clicked.labels("canary:books", "canary", "v2").inc()
    stats = arm_stats(metrics.registry)
    assert (stats["v1"].answers, stats["v1"].fallbacks, stats["v1"].errors) == (9, 1, 0)
    assert stats["v1"].quantile(0.5) == 0.005
    assert stats["v1"].quantile(1.0) == 0.5
    assert (stats["v2"].answers, stats["v2"].errors) == (1, 1)
    assert (stats["v2"].impressions, stats["v2"].clicks) == (3, 1)


def test_one_stalled_answer_of_a_small_canary_is_no_evidence() -> None:
    """Below 100 answers a p99 is the slowest answer: the latency row reads the one below it,
    so one stall passes, two roll back, and a large arm reads its plain p99."""
    production = arm(5000)
    one = arm(90, slow_share=1 / 90)
    two = arm(90, slow_share=2 / 90)
    assert (one.quantile(0.99), one.tail(0.99)) == (1, 0.001)
    assert two.tail(0.99) == 1
    assert judge(one, production, Guardrails(min_answers=20)).action == "advance"
    verdict = judge(two, production, Guardrails(min_answers=20))
    assert verdict.action == "rollback"
    assert verdict.reasons[0].startswith("p99 latency")
    large = arm(1000, slow_share=0.02)  # 20 slow answers in 1000: p99 is slow
    assert large.tail(0.99) == large.quantile(0.99) == 1
    assert arm(1000, slow_share=0.005).tail(0.99) == 0.001  # 5 in 1000: p99 is fast
    assert ArmStats().tail(0.99) == 0.0
    # the edges: 99 answers leave their slowest out; from 100 on the plain p99 does (at 100
    # it reads the 99th answer, at 101 the 100th: one slow answer of 101 is still left out)
    assert arm(99, slow_share=1 / 99).tail(0.99) == 0.001
    assert arm(100, slow_share=0.01).tail(0.99) == arm(100, slow_share=0.01).quantile(0.99)
    assert arm(100, slow_share=0.01).tail(0.99) == 0.001
    assert arm(101, slow_share=1 / 101).tail(0.99) == 0.001
    assert arm(101, slow_share=2 / 101).tail(0.99) == 1
