"""Users: profiles, GDPR erasure (suppression list + audit log)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa

from recsys.stores.engine import Database
from recsys.stores.schema import (
    audit_log,
    deleted_users,
    events,
    explorations,
    feedback,
    follows,
    impressions,
    reviews,
    users,
)


class SqlUserStore:
    """Profiles and erasure. Erased users are kept only as a salted hash."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def user(self, user_id: str) -> dict[str, Any] | None:
        with self.db.connect() as conn:
            row = conn.execute(sa.select(users).where(users.c.user_id == user_id)).first()
        if row is None:
            return None
        return {"user_id": row.user_id, "created_at": row.created_at, **json.loads(row.profile)}

    def user_hash(self, user_id: str) -> str:
        return self.db.user_hash(user_id)

    def is_deleted(self, user_id: str) -> bool:
        query = sa.select(deleted_users.c.user_hash).where(
            deleted_users.c.user_hash == self.db.user_hash(user_id)
        )
        with self.db.connect() as conn:
            return conn.execute(query).first() is not None

    def deleted_filter(self, user_ids: Iterable[str]) -> set[str]:
        """The ids among ``user_ids`` that were erased."""
        with self.db.connect() as conn:
            hashes = {str(h) for (h,) in conn.execute(sa.select(deleted_users.c.user_hash))}
        if not hashes:
            return set()
        return {u for u in user_ids if self.db.user_hash(u) in hashes}

    def delete_user(self, user_id: str, actor: str) -> dict[str, Any]:
        """GDPR erasure: events, profile, impressions, feedback, explorations, reviews and
        follows (both ways) removed, the id suppressed, an audit entry written (one
        transaction).

        Returns what was removed (counts). The audit entry holds the actor, the time and the
        counts, and the subject as a salted hash only.
        """
        subject = self.db.user_hash(user_id)
        owned = {
            "events": events,
            "profile": users,
            "impressions": impressions,
            "feedback": feedback,
            "explorations": explorations,
            "reviews": reviews,
            "follows": follows,  # whom they follow; who follows them, below
        }
        with self.db.begin() as conn:
            details = {
                name: int(conn.execute(sa.delete(t).where(t.c.user_id == user_id)).rowcount)
                for name, t in owned.items()
            }
            followed_by = sa.delete(follows).where(follows.c.followee_id == user_id)
            details["follows"] += int(conn.execute(followed_by).rowcount)
            conn.execute(
                self.db.insert(deleted_users).on_conflict_do_nothing(index_elements=["user_hash"]),
                [{"user_hash": subject, "deleted_at": time.time()}],
            )
            conn.execute(
                audit_log.insert().values(
                    at=time.time(),
                    actor=actor,
                    action="delete_user",
                    subject_hash=subject,
                    details=json.dumps(details),
                )
            )
        return details

    def follow(self, user_id: str, followee_id: str) -> bool:
        """``user_id`` follows ``followee_id``; False when it already did."""
        row = {"user_id": user_id, "followee_id": followee_id, "created_at": time.time()}
        insert = (
            self.db.insert(follows)
            .on_conflict_do_nothing(index_elements=["user_id", "followee_id"])
            .returning(follows.c.user_id)
        )
        with self.db.begin() as conn:
            return conn.execute(insert, [row]).first() is not None

    def unfollow(self, user_id: str, followee_id: str) -> bool:
        """``user_id`` stops following ``followee_id``; False when it did not."""
        where = (follows.c.user_id == user_id, follows.c.followee_id == followee_id)
        with self.db.begin() as conn:
            return int(conn.execute(sa.delete(follows).where(*where)).rowcount) > 0

    def following(self, user_id: str) -> list[tuple[str, float]]:
        """(followee id, since) of everyone ``user_id`` follows, oldest first."""
        query = (
            sa.select(follows.c.followee_id, follows.c.created_at)
            .where(follows.c.user_id == user_id)
            .order_by(follows.c.created_at, follows.c.followee_id)
        )
        with self.db.connect() as conn:
            return [(str(f), float(t)) for f, t in conn.execute(query)]

    def followers(self, user_id: str) -> list[str]:
        """Everyone who follows ``user_id`` (their lists name what ``user_id`` read)."""
        query = sa.select(follows.c.user_id).where(follows.c.followee_id == user_id)
        with self.db.connect() as conn:
            return [str(u) for (u,) in conn.execute(query)]

    def audit(self) -> list[dict[str, Any]]:
        with self.db.connect() as conn:
            rows = conn.execute(sa.select(audit_log).order_by(audit_log.c.id)).all()
        return [
            {
                "at": r.at,
                "actor": r.actor,
                "action": r.action,
                "subject_hash": r.subject_hash,
                **json.loads(r.details),
            }
            for r in rows
        ]
