"""The exploration policy's draw: softmax without replacement, with honest propensities."""

from __future__ import annotations

import numpy as np

from recsys.serving.exploration import draw


def test_first_draws_follow_the_softmax_and_report_its_probability() -> None:
    rng = np.random.default_rng(0)
    pool = np.array([10, 11, 12])
    logits = np.array([2.0, 1.0, 0.0])
    expected = np.exp(logits) / np.exp(logits).sum()
    firsts = [draw(rng, pool, logits, 1)[0] for _ in range(20000)]
    share = {b: sum(1 for f, _ in firsts if f == b) / len(firsts) for b in pool.tolist()}
    for book, p in zip(pool.tolist(), expected, strict=True):
        assert abs(share[book] - p) < 0.015
    assert {round(q, 9) for _, q in firsts} == {round(float(p), 9) for p in expected}


def test_without_replacement_the_second_propensity_is_renormalised() -> None:
    rng = np.random.default_rng(1)
    pool = np.array([10, 11])
    (first, p1), (second, p2) = draw(rng, pool, np.array([0.0, 0.0]), 2)
    assert {first, second} == {10, 11}
    assert p1 == 0.5
    assert p2 == 1.0  # one book left
    assert draw(rng, pool, np.array([0.0, 0.0]), 5)[1][1] == 1.0  # never more than the pool
