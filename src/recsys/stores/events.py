"""Reading events: durable, idempotent appends and the history reads of serving and batch."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import NamedTuple

import polars as pl
import sqlalchemy as sa

from recsys.errors import RecsysError
from recsys.stores.engine import Database
from recsys.stores.schema import (
    EVENT_TYPES,
    EXCLUDING_EVENT_TYPES,
    HISTORY_EVENT_TYPES,
    NEGATIVE_EVENT_TYPES,
    Event,
    events,
    users,
)

HISTORY_FRAME_SCHEMA: dict[str, pl.DataType] = {
    "user_id": pl.String(),
    "book_id": pl.String(),
    "type": pl.String(),
    "value": pl.Float64(),
    "ts": pl.Float64(),
}
MARKS_FRAME_SCHEMA: dict[str, pl.DataType] = {
    "user_id": pl.String(),
    "book_id": pl.String(),
    "type": pl.String(),
    "ts": pl.Float64(),
}


FRIEND_EVENTS = 50  # of each followee, their latest this many history events are read


class ServingReads(NamedTuple):
    """A reader as serving reads them (:meth:`SqlEventStore.serving_reads`).

    Attributes:
        erased: the reader was erased (nothing else is read).
        history: history event book ids, oldest first.
        marks: (book id, type): not interested, disliked, less of this author.
        friends: (followee id, book id) of the readers they follow: each followee once with
            an empty book id, then the latest :data:`FRIEND_EVENTS` history events of each
            followee, oldest first.
    """

    erased: bool
    history: list[str]
    marks: list[tuple[str, str]]
    friends: list[tuple[str, str]]


def check_history_types(types: Iterable[str]) -> tuple[str, ...]:
    """The event types that count as reading history (RecsysError naming the known ones)."""
    out = tuple(types)
    unknown = set(out) - set(EVENT_TYPES)
    if unknown:
        raise RecsysError(f"unknown event type(s) {sorted(unknown)}; use {HISTORY_EVENT_TYPES}.")
    negative = sorted(set(out) & set(NEGATIVE_EVENT_TYPES))
    if negative:
        raise RecsysError(
            f"{negative} are a reader's preferences (books to leave out), never reading "
            f"history; history types are {HISTORY_EVENT_TYPES}."
        )
    return out


class SqlEventStore:
    """Events by user, idempotent by ``(user_id, event_id)``.

    Args:
        db: the shared database.
        history_types: event types that count as reading history.
    """

    def __init__(self, db: Database, history_types: Iterable[str] = HISTORY_EVENT_TYPES) -> None:
        self.db = db
        self.history_types = check_history_types(history_types)
        types = ", ".join(f"'{t}'" for t in self.history_types)  # validated names only
        negative = ", ".join(f"'{t}'" for t in NEGATIVE_EVENT_TYPES)
        # k: 2 erased, 1 a mark, 0 a history event; 4 a followee (in ``type``), 3 a
        # followee's history event (the followee in ``type``)
        self._serving_query = sa.text(
            "SELECT 2 AS k, '' AS book_id, '' AS type, 0.0 AS ts, 0 AS seq FROM deleted_users "
            "WHERE user_hash = :h UNION ALL SELECT 1, book_id, type, ts, seq FROM events "
            f"WHERE user_id = :u AND type IN ({negative}) UNION ALL SELECT 0, book_id, type, "
            f"ts, seq FROM events WHERE user_id = :u AND type IN ({types}) "
            "UNION ALL SELECT 4, '', followee_id, created_at, 0 FROM follows WHERE user_id = :u "
            "UNION ALL SELECT 3, book_id, user_id, ts, seq FROM (SELECT e.book_id, e.user_id, "
            "e.ts, e.seq, ROW_NUMBER() OVER (PARTITION BY e.user_id ORDER BY e.ts DESC, "
            "e.seq DESC) AS r FROM events e JOIN follows f ON e.user_id = f.followee_id "
            f"WHERE f.user_id = :u AND e.type IN ({types})) recent WHERE r <= {FRIEND_EVENTS} "
            "ORDER BY k DESC, ts, seq"
        )

    def append(self, batch: list[Event]) -> tuple[int, int]:
        """Store events durably (one transaction); returns (stored, duplicates)."""
        stored = self.append_new(batch)
        return len(stored), len(batch) - len(stored)

    def append_new(self, batch: list[Event]) -> list[Event]:
        """Store events durably (one transaction); returns those not stored before (a retry's
        duplicates are left out, so they count once everywhere, trending included)."""
        events_in = [event.with_id() for event in batch]
        if not events_in:
            return []
        now = time.time()
        rows = [
            {
                "event_id": e.event_id,
                "user_id": e.user_id,
                "book_id": e.book_id,
                "type": e.type,
                "value": e.value,
                "ts": e.ts,
                "received_at": now,
            }
            for e in events_in
        ]
        insert = (
            self.db.insert(events)
            .on_conflict_do_nothing(index_elements=["user_id", "event_id"])
            .returning(events.c.user_id, events.c.event_id)
        )
        with self.db.begin() as conn:
            new_ids = {(str(u), str(i)) for u, i in conn.execute(insert, rows).all()}
            conn.execute(
                self.db.insert(users).on_conflict_do_nothing(index_elements=["user_id"]),
                [
                    {"user_id": u, "created_at": now, "profile": "{}"}
                    for u in {r["user_id"] for r in rows}
                ],
            )
        return [e for e in events_in if (e.user_id, e.event_id) in new_ids]

    def history(self, user_id: str) -> list[tuple[str, float, str]]:
        """(book_id, ts, type) of the user's history events, oldest first."""
        query = (
            sa.select(events.c.book_id, events.c.ts, events.c.type)
            .where(events.c.user_id == user_id, events.c.type.in_(self.history_types))
            .order_by(events.c.ts, events.c.seq)
        )
        with self.db.connect() as conn:
            return [(str(b), float(t), str(k)) for b, t, k in conn.execute(query)]

    def serving_history(self, user_id: str) -> tuple[bool, list[str]]:
        """(erased?, history book ids oldest first): :meth:`serving_reads` less the
        preferences."""
        reads = self.serving_reads(user_id)
        return reads.erased, reads.history

    def serving_reads(self, user_id: str) -> ServingReads:
        """What serving reads of a reader, in one round trip: the per-request read (a text
        statement, where building the same query with the expression language cost ~200 µs;
        through :meth:`Database.read_rows`). See :class:`ServingReads`."""
        params = {"h": self.db.user_hash(user_id), "u": user_id}
        rows = self.db.read_rows(self._serving_query, params)
        if rows and rows[0][0] == 2:
            return ServingReads(True, [], [], [])
        history = [str(r[1]) for r in rows if r[0] == 0]
        marks = [(str(r[1]), str(r[2])) for r in rows if r[0] == 1]
        friends = [(str(r[2]), str(r[1])) for r in rows if r[0] in (3, 4)]
        return ServingReads(False, history, marks, friends)

    def preferences(self, user_id: str) -> list[tuple[str, str, float]]:
        """(book_id, type, ts) of the reader's standing marks, the latest of each kind per
        book, oldest first."""
        query = (
            sa.select(events.c.book_id, events.c.type, events.c.ts)
            .where(events.c.user_id == user_id, events.c.type.in_(NEGATIVE_EVENT_TYPES))
            .order_by(events.c.ts, events.c.seq)
        )
        with self.db.connect() as conn:
            latest = {
                (str(b), str(k)): (str(b), str(k), float(t)) for b, k, t in conn.execute(query)
            }
        return sorted(latest.values(), key=lambda row: row[2])

    def forget_preferences(self, user_id: str, book_id: str | None = None) -> int:
        """Withdraw the reader's marks on ``book_id`` (every book when None); returns how
        many events were removed."""
        where = [events.c.user_id == user_id, events.c.type.in_(NEGATIVE_EVENT_TYPES)]
        if book_id is not None:
            where.append(events.c.book_id == book_id)
        with self.db.begin() as conn:
            return int(conn.execute(sa.delete(events).where(*where)).rowcount)

    def event_histories(self) -> dict[str, list[str]]:
        """Every user's history events (book ids, oldest first): batch jobs and exports."""
        query = (
            sa.select(events.c.user_id, events.c.book_id)
            .where(events.c.type.in_(self.history_types))
            .order_by(events.c.user_id, events.c.ts, events.c.seq)
        )
        out: dict[str, list[str]] = {}
        with self.db.connect() as conn:
            for user, book in conn.execute(query):
                out.setdefault(str(user), []).append(str(book))
        return out

    def history_frame(self) -> pl.DataFrame:
        """Every history event as ``(user_id, book_id, type, value, ts)``, oldest first:
        retraining reads them all at once (:data:`HISTORY_FRAME_SCHEMA`)."""
        query = (
            sa.select(
                events.c.user_id, events.c.book_id, events.c.type, events.c.value, events.c.ts
            )
            .where(events.c.type.in_(self.history_types))
            .order_by(events.c.ts, events.c.seq)
        )
        with self.db.connect() as conn:
            rows = [tuple(row) for row in conn.execute(query)]
        return pl.DataFrame(rows, schema=HISTORY_FRAME_SCHEMA, orient="row")

    def marks_frame(self) -> pl.DataFrame:
        """Every standing mark (withdrawn marks are deleted) as ``(user_id, book_id, type,
        ts)``, oldest first: per (user, book) the latest book mark (``not_interested``,
        ``dislike``) and any ``less_of_author``. Retraining uses them as negatives
        (:data:`MARKS_FRAME_SCHEMA`)."""
        query = (
            sa.select(events.c.user_id, events.c.book_id, events.c.type, events.c.ts)
            .where(events.c.type.in_(NEGATIVE_EVENT_TYPES))
            .order_by(events.c.ts, events.c.seq)
        )
        with self.db.connect() as conn:
            rows = [tuple(row) for row in conn.execute(query)]
        frame = pl.DataFrame(rows, schema=MARKS_FRAME_SCHEMA, orient="row")
        kind = pl.when(pl.col("type").is_in(EXCLUDING_EVENT_TYPES)).then(0).otherwise(1)
        frame = frame.with_columns(kind.alias("_kind"))
        return frame.unique(["user_id", "book_id", "_kind"], keep="last", maintain_order=True).drop(
            "_kind"
        )

    def recent(self, since: float) -> Iterator[tuple[str, str, float]]:
        """(book_id, type, ts) of events since ``since``: trending."""
        query = sa.select(events.c.book_id, events.c.type, events.c.ts).where(events.c.ts >= since)
        with self.db.connect() as conn:
            for book, kind, ts in conn.execute(query):
                yield str(book), str(kind), float(ts)
