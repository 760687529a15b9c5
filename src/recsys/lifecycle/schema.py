"""The model registry's tables and database (SQLAlchemy Core: a SQLite file or PostgreSQL).

``model_families`` (one row per family: the production pointer and its lineage, and the row a
transition locks), ``model_versions`` (one row per bundle version; a partial unique index
allows one production version per family), ``model_events`` (every transition and decision)
and ``model_servers`` (heartbeats: what each running server serves).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from recsys.errors import RecsysError
from recsys.redact import redact

metadata = sa.MetaData()
families = sa.Table(
    "model_families",
    metadata,
    sa.Column("family", sa.String(200), primary_key=True),
    sa.Column("production", sa.String(200), nullable=True),
    # production versions in the order they became production; a rollback pops the last
    sa.Column("lineage", sa.Text, nullable=False, default="[]"),
    sa.Column("updated_at", sa.Float, nullable=False),
)
versions = sa.Table(
    "model_versions",
    metadata,
    sa.Column("family", sa.String(200), primary_key=True),
    sa.Column("version", sa.String(200), primary_key=True),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("stage", sa.String(16), nullable=False),
    sa.Column("metrics", sa.Text, nullable=False),  # JSON object
    sa.Column("data_fingerprint", sa.String(200), nullable=False),
    sa.Column("parent", sa.String(200), nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("promoted_at", sa.Float, nullable=True),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("reasons", sa.Text, nullable=False),  # JSON list
    sa.Index(
        "model_versions_one_production",
        "family",
        unique=True,
        sqlite_where=sa.text("stage = 'production'"),
        postgresql_where=sa.text("stage = 'production'"),
    ),
)
events = sa.Table(
    "model_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("family", sa.String(200), nullable=False),
    sa.Column("version", sa.String(200), nullable=True),
    sa.Column("event", sa.String(64), nullable=False),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("details", sa.Text, nullable=False),  # JSON object
    sa.Index("model_events_family_version", "family", "version"),
)
servers = sa.Table(
    "model_servers",
    metadata,
    sa.Column("server_id", sa.String(200), primary_key=True),
    sa.Column("serving", sa.Text, nullable=False),  # JSON [[family, version], ...]
    sa.Column("poll_s", sa.Float, nullable=False),
    sa.Column("last_seen", sa.Float, nullable=False),
)


class RegistryUnavailable(RecsysError):
    """The registry's database cannot be reached (or opened)."""


class RegistryDb:
    """The registry's engine: creates the tables on open; every transition is one transaction
    holding its family's lock (SQLite: ``BEGIN IMMEDIATE``, one writer at a time; PostgreSQL:
    the family row ``FOR UPDATE``).

    Args:
        url: ``sqlite:///path/registry.db`` or ``postgresql+psycopg://…``.
    """

    def __init__(self, url: str) -> None:
        self.url, self.is_sqlite = url, url.startswith("sqlite")
        if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        connect_args = {} if self.is_sqlite else {"connect_timeout": 2}
        try:
            self.engine = sa.create_engine(
                url, pool_pre_ping=not self.is_sqlite, connect_args=connect_args
            )
        except (sa.exc.ArgumentError, ModuleNotFoundError) as exc:
            raise RecsysError(f"bad registry.url {redact(url)!r}: {exc}") from None
        if self.is_sqlite:
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        with self.unreachable_is_unavailable():
            self._create_tables()

    def close(self) -> None:
        self.engine.dispose()

    def _create_tables(self, attempts: int = 3) -> None:
        """Create what is missing; processes opening a new PostgreSQL registry at once (Ray
        replicas) may race on ``CREATE TABLE``: the loser looks again."""
        for attempt in range(attempts):
            try:
                metadata.create_all(self.engine)
                return
            except (sa.exc.IntegrityError, sa.exc.ProgrammingError):
                if attempt == attempts - 1:
                    raise

    def insert(self, table: sa.Table) -> Any:
        """INSERT with ``on_conflict_do_*`` for this dialect."""
        from sqlalchemy.dialects import postgresql, sqlite

        return sqlite.insert(table) if self.is_sqlite else postgresql.insert(table)

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self.unreachable_is_unavailable(), self.engine.connect() as conn:
            yield conn

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A transaction, committed on success."""
        with self.unreachable_is_unavailable(), self.engine.begin() as conn:
            yield conn

    @contextmanager
    def locked(self, family: str, now: float) -> Iterator[Connection]:
        """A transaction that holds ``family``'s lock (its row is created when missing), so
        transitions of one family run one at a time."""
        with self.write() as conn:
            if self.is_sqlite:
                conn.exec_driver_sql("BEGIN IMMEDIATE")  # the write lock now, not at the UPDATE
            row = {"family": family, "production": None, "lineage": "[]", "updated_at": now}
            conn.execute(self.insert(families).values(row).on_conflict_do_nothing())
            query = sa.select(families.c.family).where(families.c.family == family)
            conn.execute(query if self.is_sqlite else query.with_for_update())
            yield conn

    @contextmanager
    def unreachable_is_unavailable(self) -> Iterator[None]:
        try:
            yield
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
            raise RegistryUnavailable(
                f"cannot reach the model registry at {redact(self.url)}: {exc.orig}; "
                "check registry.url (and that the database is up)."
            ) from None


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=10000")  # writers queue instead of failing at once
    cursor.close()
