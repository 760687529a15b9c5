"""A/B experiments: impressions (lists served under a variant) and feedback on them."""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa

from recsys.stores.engine import Database
from recsys.stores.schema import Impression, explorations, feedback, impressions


class SqlExperimentStore:
    """Impressions and feedback, and the per-variant counts of the experiments report."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def log_impressions(self, rows: list[dict[str, Any]]) -> None:
        """Recommendation lists served under an experiment (request_id, at, user_id,
        experiment, variant, books, bundle)."""
        if not rows:
            return
        insert = self.db.insert(impressions).on_conflict_do_nothing(index_elements=["request_id"])
        with self.db.begin() as conn:
            conn.execute(insert, rows)

    def log_explorations(self, rows: list[dict[str, Any]]) -> None:
        """Books served in exploration slots (request_id, at, user_id, book_id, position,
        propensity, pool, bundle)."""
        if not rows:
            return
        with self.db.begin() as conn:
            conn.execute(explorations.insert(), rows)

    def explorations_of(self, user_id: str) -> list[dict[str, Any]]:
        """The reader's exploration rows, oldest first."""
        query = (
            sa.select(explorations)
            .where(explorations.c.user_id == user_id)
            .order_by(explorations.c.id)
        )
        with self.db.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def log_feedback(self, request_id: str, user_id: str, book_id: str, kind: str) -> None:
        with self.db.begin() as conn:
            conn.execute(
                feedback.insert().values(
                    at=time.time(),
                    request_id=request_id,
                    user_id=user_id,
                    book_id=book_id,
                    type=kind,
                )
            )

    def impression(self, request_id: str) -> Impression | None:
        """The logged list with this request id (None: none), with whether a click on it is
        recorded already (a clicked impression counts once toward click-through)."""
        clicked = (
            sa.select(feedback.c.id)
            .where(feedback.c.request_id == request_id, feedback.c.type == "click")
            .exists()
        )
        i = impressions.c
        query = sa.select(i.user_id, i.experiment, i.variant, i.bundle, clicked).where(
            i.request_id == request_id
        )
        with self.db.connect() as conn:
            row = conn.execute(query).first()
        if row is None:
            return None
        return Impression(str(row[0]), str(row[1]), str(row[2]), str(row[3]), bool(row[4]))

    def experiment_counts(self, name: str) -> dict[str, tuple[int, int]]:
        """variant -> (impressions, impressions with at least one click)."""
        clicked = (
            sa.select(feedback.c.request_id).where(feedback.c.type == "click").distinct().subquery()
        )
        query = (
            sa.select(
                impressions.c.variant,
                sa.func.count(),
                sa.func.count(clicked.c.request_id),
            )
            .select_from(
                impressions.outerjoin(clicked, clicked.c.request_id == impressions.c.request_id)
            )
            .where(impressions.c.experiment == name)
            .group_by(impressions.c.variant)
        )
        with self.db.connect() as conn:
            return {str(v): (int(n), int(c)) for v, n, c in conn.execute(query)}

    def experiment_series(self, name: str, bucket_s: int) -> list[tuple[float, str, int, int]]:
        """(start of the time bucket, variant, impressions, clicked impressions) per
        ``bucket_s``-second bucket of impression time, oldest first."""
        clicked = (
            sa.select(feedback.c.request_id).where(feedback.c.type == "click").distinct().subquery()
        )
        # floor(at) on both backends: SQLite's cast truncates, PostgreSQL's rounds
        whole = sa.cast(impressions.c.at, sa.BigInteger)
        floor = whole - sa.case((whole > impressions.c.at, 1), else_=0)
        bucket = (floor // bucket_s).label("bucket")
        query = (
            sa.select(
                bucket, impressions.c.variant, sa.func.count(), sa.func.count(clicked.c.request_id)
            )
            .select_from(
                impressions.outerjoin(clicked, clicked.c.request_id == impressions.c.request_id)
            )
            .where(impressions.c.experiment == name)
            .group_by(bucket, impressions.c.variant)
            .order_by(bucket, impressions.c.variant)
        )
        with self.db.connect() as conn:
            return [
                (float(int(b) * bucket_s), str(v), int(n), int(c))
                for b, v, n, c in conn.execute(query)
            ]
