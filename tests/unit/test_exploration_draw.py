"""The exploration policy's draw: softmax without replacement, with honest propensities."""

from __future__ import annotations

import numpy as np

from recsys.serving.exploration import _member, draw, draw_one


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


def test_draw_one_is_numpys_weighted_choice_from_the_same_stream() -> None:
    """The inverse-CDF draw picks what ``rng.choice(n, p=softmax)`` picks from the same
    seed (dead books never), so logged propensities keep meaning what they meant."""
    rng = np.random.default_rng(1)
    for _ in range(200):
        n = int(rng.integers(1, 3000))
        logits = rng.normal(size=n) * 3
        alive = rng.random(n) < 0.7
        alive[int(rng.integers(n))] = True
        seed = int(rng.integers(2**31))
        pick, probability = draw_one(np.random.default_rng(seed), logits, alive)
        weights = np.where(alive, np.exp(logits - logits[alive].max()), 0.0)
        weights /= weights.sum()
        assert pick == int(np.random.default_rng(seed).choice(n, p=weights))
        assert alive[pick]
        assert abs(probability - weights[pick]) < 1e-12


def test_member_is_isin() -> None:
    rng = np.random.default_rng(2)
    for _ in range(200):
        values = rng.integers(-3, 100, 400)
        wanted = rng.integers(-1 if rng.random() < 0.2 else 0, 120, int(rng.integers(0, 30)))
        np.testing.assert_array_equal(_member(values, wanted), np.isin(values, wanted))
