"""Served lists against in-process lists: the parity check of every runner.

The in-process reference is the bundle's :class:`RecommendationService` called one request at
a time (a batch of one, no HTTP). The served side sends the same users concurrently, so the
micro-batcher (local, Ray fused) or the chained stages put them into shared batches. The
model's books and their order must be the same, and their scores the same to the 6th
decimal (a batched matrix product rounds by batch size); exploration slots are drawn at
random, so those slots are compared by position only.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from recsys.bundle.reader import load_bundle
from recsys.serving.live import Live
from recsys.serving.service import RecommendationService

Listed = tuple[list[tuple[str, float]], list[int]]  # (book, score) model slots; explored slots


def parity_users(bundle: Path, n: int = 16) -> list[str]:
    """Known users with histories of different lengths (spread over the histories table)."""
    histories = load_bundle(bundle).histories
    step = max(1, histories.height // n)
    return [str(histories.row(i)[0]) for i in range(0, step * n, step)]


def in_process(
    bundle: Path, users: list[str], limit: int, live: dict[str, Any] | None = None
) -> dict[str, Listed]:
    """Each user's list from this bundle alone, one request at a time (``live``: the
    serving settings, as the served side has them)."""
    settings = Live.from_config(live) if live is not None else None
    service = RecommendationService(load_bundle(bundle), 30.0, live=settings)
    ids = service.catalogue.ids
    out: dict[str, Listed] = {}
    try:
        for user in users:
            answer = service.for_user(user, limit, [], None)
            assert answer.source == "personalized", (user, answer.fallback_reason)
            explored = sorted(p for _, p, _, _ in answer.explored)
            model = [
                (str(ids[b]), round(float(s), 6))
                for position, (b, s) in enumerate(zip(answer.books, answer.scores, strict=True), 1)
                if position not in explored
            ]
            out[user] = (model, explored)
    finally:
        service.close()
        if settings is not None:
            settings.close()
    return out


def served(base: str, users: list[str], limit: int, rounds: int = 3) -> list[dict[str, Listed]]:
    """Each user's list over HTTP, all users at once from ``len(users)`` threads, ``rounds``
    times; every answer must be a personalised 200."""

    def ask(client: httpx.Client, user: str) -> tuple[str, Listed]:
        response = client.post(f"/recommendations/users/{user}", json={"limit": limit})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["metadata"]["source"] == "personalized", body["metadata"]
        explored = sorted(e["position"] for e in body["metadata"]["explored"])
        model = [
            (r["book_id"], r["confidence_score"])
            for position, r in enumerate(body["recommendations"], 1)
            if position not in explored
        ]
        return user, (model, explored)

    limits = httpx.Limits(max_connections=len(users))
    out = []
    with (
        httpx.Client(base_url=base, timeout=60, limits=limits) as client,
        ThreadPoolExecutor(len(users)) as pool,
    ):
        for _ in range(rounds):
            out.append(dict(pool.map(lambda u: ask(client, u), users)))
    return out


def assert_same(expected: dict[str, Listed], rounds: list[dict[str, Any]]) -> None:
    """Every served round equals the in-process lists: books, order, scores, explored slots."""
    for answers in rounds:
        for user, (model, explored) in expected.items():
            got_model, got_explored = answers[user]
            assert got_explored == explored, user
            assert [b for b, _ in got_model] == [b for b, _ in model], user
            for (book, got), (_, want) in zip(got_model, model, strict=True):
                # a batched product rounds by batch size: the 6th decimal may differ
                assert abs(got - want) <= 2e-6, (user, book, got, want)
