"""Tables of the serving database (SQLAlchemy Core), shared by every role store.

``events`` (idempotent by ``(user_id, event_id)``), ``users`` (profiles), ``books`` (the catalogue:
seeded from the bundle, then edited through the API), ``deleted_users`` (suppression list: a
salted hash of each erased id, so erased users stay out of later exports and batch outputs
without keeping the id), ``audit_log`` (who erased what and when, counts only),
``impressions`` and ``feedback`` (A/B experiments), ``settings`` (the hash salt), ``reviews``,
``follows`` (who reads whose list), ``explorations``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import sqlalchemy as sa

HISTORY_EVENT_TYPES = ("view", "rate", "want_to_read", "read", "purchase")
# a reader's "not for me": stored like any event, never history. not_interested and dislike
# leave the book (every edition) out; less_of_author down-weights its author's books
EXCLUDING_EVENT_TYPES = ("not_interested", "dislike")
AUTHOR_EVENT_TYPES = ("less_of_author",)
NEGATIVE_EVENT_TYPES = (*EXCLUDING_EVENT_TYPES, *AUTHOR_EVENT_TYPES)
EVENT_TYPES = (*HISTORY_EVENT_TYPES, *NEGATIVE_EVENT_TYPES)
BOOK_FIELDS = (
    "title",
    "authors",
    "year",
    "publisher",
    "language",
    "tags",
    "cover_url",
    "series",
    "series_position",
    "work_id",
)
BOOK_COLUMNS = ("book_id", *BOOK_FIELDS)

metadata = sa.MetaData()
events = sa.Table(
    "events",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.String(128), nullable=False),
    sa.Column("user_id", sa.String(200), nullable=False),
    sa.Column("book_id", sa.String(200), nullable=False),
    sa.Column("type", sa.String(32), nullable=False),
    sa.Column("value", sa.Float, nullable=True),
    sa.Column("ts", sa.Float, nullable=False),  # event time, epoch seconds
    sa.Column("received_at", sa.Float, nullable=False),
    sa.Index("events_user_ts", "user_id", "ts"),
    sa.Index("events_ts", "ts"),
    # idempotency per user: another user's event with the same id is a different event
    sa.UniqueConstraint("user_id", "event_id", name="events_user_event"),
)
users = sa.Table(
    "users",
    metadata,
    sa.Column("user_id", sa.String(200), primary_key=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("profile", sa.Text, nullable=False, default="{}"),
)
books = sa.Table(
    "books",
    metadata,
    sa.Column("book_id", sa.String(200), primary_key=True),
    sa.Column("title", sa.Text, nullable=True),
    sa.Column("authors", sa.Text, nullable=True),
    sa.Column("year", sa.Integer, nullable=True),
    sa.Column("publisher", sa.Text, nullable=True),
    sa.Column("language", sa.String(32), nullable=True),
    sa.Column("tags", sa.Text, nullable=False, default="[]"),
    sa.Column("cover_url", sa.Text, nullable=True),
    sa.Column("series", sa.Text, nullable=True),
    sa.Column("series_position", sa.Float, nullable=True),
    sa.Column("work_id", sa.String(300), nullable=True),
    sa.Column("updated_at", sa.Float, nullable=False),
    # bundle: seeded from a model bundle; api: added through the API (embedded at start)
    sa.Column("origin", sa.String(16), nullable=False, server_default="bundle"),
    # delisted through the API: kept, so a later seed never brings it back
    sa.Column("deleted", sa.Boolean, nullable=False, server_default=sa.false()),
)
deleted_users = sa.Table(
    "deleted_users",
    metadata,
    sa.Column("user_hash", sa.String(64), primary_key=True),
    sa.Column("deleted_at", sa.Float, nullable=False),
)
audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("subject_hash", sa.String(64), nullable=False),
    sa.Column("details", sa.Text, nullable=False),
)
settings = sa.Table(
    "settings",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)
impressions = sa.Table(
    "impressions",
    metadata,
    sa.Column("request_id", sa.String(128), primary_key=True),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("user_id", sa.String(200), nullable=False, index=True),
    sa.Column("experiment", sa.String(200), nullable=False, index=True),
    sa.Column("variant", sa.String(200), nullable=False),
    sa.Column("books", sa.Text, nullable=False),
    # the bundle version that served the list ('' for lists logged before it was recorded)
    sa.Column("bundle", sa.String(200), nullable=False, server_default=""),
)
reviews = sa.Table(
    # one review per reader and book, editable; erased with the reader
    "reviews",
    metadata,
    sa.Column("user_id", sa.String(200), primary_key=True),
    sa.Column("book_id", sa.String(200), primary_key=True, index=True),
    sa.Column("rating", sa.Integer, nullable=False),  # 1-5
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)
follows = sa.Table(
    # reader user_id follows followee_id ("friends are reading"); erased with either side
    "follows",
    metadata,
    sa.Column("user_id", sa.String(200), primary_key=True),
    sa.Column("followee_id", sa.String(200), primary_key=True, index=True),
    sa.Column("created_at", sa.Float, nullable=False),
)
explorations = sa.Table(
    # books shown in exploration slots, with the probability the policy gave each (for
    # off-policy estimates): one row per book per list served
    "explorations",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.String(128), nullable=False, index=True),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("user_id", sa.String(200), nullable=False, index=True),
    sa.Column("book_id", sa.String(200), nullable=False),
    sa.Column("position", sa.Integer, nullable=False),  # 1 = first in the list
    sa.Column("propensity", sa.Float, nullable=False),
    sa.Column("pool", sa.Integer, nullable=False),  # books it was drawn from
    sa.Column("bundle", sa.String(200), nullable=False),
)
feedback = sa.Table(
    "feedback",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("request_id", sa.String(128), nullable=False, index=True),
    sa.Column("user_id", sa.String(200), nullable=False, index=True),
    sa.Column("book_id", sa.String(200), nullable=False),
    sa.Column("type", sa.String(32), nullable=False),
)


@dataclass(frozen=True)
class Event:
    """One interaction. ``event_id`` makes a retried delivery idempotent."""

    user_id: str
    book_id: str
    type: str
    ts: float
    value: float | None = None
    event_id: str = ""

    def with_id(self) -> Event:
        if self.event_id:
            return self
        return Event(self.user_id, self.book_id, self.type, self.ts, self.value, uuid.uuid4().hex)


@dataclass(frozen=True)
class Impression:
    """A list served under an experiment, as feedback finds it: who it was served to, by
    which variant and bundle, and whether it was clicked already."""

    user_id: str
    experiment: str
    variant: str
    bundle: str
    clicked: bool
