"""The database every role store shares: engine, schema creation, migrations, the hash salt.

SQLAlchemy Core, so one interface serves the embedded default (SQLite in WAL mode with
``synchronous=FULL``: an acknowledged event survives a crash of the process) and PostgreSQL in
production (``store.url=postgresql+psycopg://…``, extra ``postgres``).
"""

from __future__ import annotations

import hashlib
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from recsys.breaker import Breaker
from recsys.errors import RecsysError
from recsys.stores.errors import StoreUnavailable
from recsys.stores.schema import metadata, settings

STORE_RETRY_S = 2  # Retry-After of a 503 while the store is unreachable
READERS_KEPT = 16  # idle sqlite3 read connections a store keeps (Database.read_rows)

# SQLite full-text search over titles and authors, kept in step by triggers.
_FTS = [
    "CREATE VIRTUAL TABLE IF NOT EXISTS books_fts USING fts5("
    "book_id UNINDEXED, title, authors, tokenize='unicode61 remove_diacritics 2')",
    "CREATE TRIGGER IF NOT EXISTS books_fts_insert AFTER INSERT ON books BEGIN "
    "INSERT INTO books_fts(book_id, title, authors) "
    "VALUES (new.book_id, new.title, new.authors); END",
    "CREATE TRIGGER IF NOT EXISTS books_fts_delete AFTER DELETE ON books BEGIN "
    "DELETE FROM books_fts WHERE book_id = old.book_id; END",
    "CREATE TRIGGER IF NOT EXISTS books_fts_update AFTER UPDATE ON books BEGIN "
    "DELETE FROM books_fts WHERE book_id = old.book_id; "
    "INSERT INTO books_fts(book_id, title, authors) "
    "VALUES (new.book_id, new.title, new.authors); END",
]


class Database:
    """One SQL database: creates the schema (and migrates older stores) on open.

    Args:
        url: SQLAlchemy URL, e.g. ``sqlite:///artifacts/stores/recsys.db``.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.breaker = Breaker("store")  # counts failures; /metrics shows it down 5 s after one
        # a server that does not answer fails a request in seconds, not at the OS timeout
        connect_args = {} if self.is_sqlite else {"connect_timeout": 2}
        try:
            self.engine: Engine = sa.create_engine(
                url, pool_pre_ping=not self.is_sqlite, connect_args=connect_args
            )
        except (sa.exc.ArgumentError, ModuleNotFoundError) as exc:
            raise RecsysError(f"bad store.url {url!r}: {exc}") from None
        if self.is_sqlite:
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        # the request path's reads on a SQLite file: a few sqlite3 connections (read_rows)
        database = sa.engine.make_url(url).database if self.is_sqlite else None
        self._read_path = database if database and database != ":memory:" else None
        self._idle: list[tuple[int, sqlite3.Connection]] = []  # (generation, connection)
        self._generation = 0  # close() bumps it: a connection from before is closed, not kept
        try:
            metadata.create_all(self.engine)
            self._migrate()
            self.salt = self._create_extras()
        except sa.exc.OperationalError as exc:
            raise RecsysError(f"cannot open the store at {url}: {exc.orig}") from None

    def close(self) -> None:
        self._generation += 1  # connections out now are closed when they come back
        while self._idle:
            self._idle.pop()[1].close()
        self.engine.dispose()

    def read_rows(self, statement: sa.TextClause, params: dict[str, Any]) -> list[Any]:
        """The rows of a read-only text statement (named ``:params``) on the request path.

        On a SQLite file, through a sqlite3 connection of this store's own small pool
        (autocommit, ``query_only``; in WAL mode every statement sees the latest commit): the
        serving read took ~16 µs so, against ~120 µs through a pooled SQLAlchemy connection,
        whose pool of 5 also opened and closed a connection per request past 5 concurrent
        ones (docs/results/serving.md). The pool is not per thread: under Ray Serve every
        request ran in a new thread. Elsewhere (PostgreSQL), a pooled SQLAlchemy connection.
        An unreachable or failing database is :class:`StoreUnavailable`, as for every read."""
        if self._read_path is None:
            with self.connect() as pooled:
                return list(pooled.execute(statement, params).all())
        generation, reader = self._checkout()
        with self._unreachable_is_unavailable():
            try:
                rows = reader.execute(statement.text, params).fetchall()
            except sqlite3.Error:
                reader.close()  # not kept: the next read opens another
                raise
        if generation == self._generation and len(self._idle) < READERS_KEPT:
            self._idle.append((generation, reader))  # list append and pop hold the GIL
        else:
            reader.close()
        return rows

    def _checkout(self) -> tuple[int, sqlite3.Connection]:
        """An idle read connection of this generation, else a new one."""
        while True:
            try:
                generation, conn = self._idle.pop()
            except IndexError:
                break
            if generation == self._generation:
                return generation, conn
            conn.close()
        assert self._read_path is not None
        generation = self._generation
        with self._unreachable_is_unavailable():
            conn = sqlite3.connect(
                self._read_path, timeout=5.0, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA query_only=1")
        return generation, conn

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        """A connection; the database being unreachable is :class:`StoreUnavailable`."""
        with self._unreachable_is_unavailable(), self.engine.connect() as conn:
            yield conn

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """A transaction (committed on success); unreachable is :class:`StoreUnavailable`.
        Nothing is acknowledged unless the commit succeeded."""
        with self._unreachable_is_unavailable(), self.engine.begin() as conn:
            yield conn

    @contextmanager
    def _unreachable_is_unavailable(self) -> Iterator[None]:
        """The database unreachable, through SQLAlchemy or sqlite3 itself (``read_rows``), is
        :class:`StoreUnavailable`, counted by the breaker."""
        try:
            yield
        except (
            sa.exc.OperationalError,
            sa.exc.InterfaceError,
            sqlite3.OperationalError,
            sqlite3.InterfaceError,
        ) as exc:
            self.breaker.failed(exc)
            raise StoreUnavailable(
                "the store is unreachable; retry shortly", retry_after=STORE_RETRY_S
            ) from exc
        except sa.exc.DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
            self.breaker.failed(exc)
            raise StoreUnavailable(
                "the store connection was lost; retry shortly", retry_after=STORE_RETRY_S
            ) from exc

    def user_hash(self, user_id: str) -> str:
        """The salted hash that stands for an erased user (never the id itself)."""
        return hashlib.sha256(f"{self.salt}:{user_id}".encode()).hexdigest()

    def insert(self, table: sa.Table) -> Any:
        """INSERT with ``on_conflict_do_nothing`` for this dialect."""
        from sqlalchemy.dialects import postgresql, sqlite

        return sqlite.insert(table) if self.is_sqlite else postgresql.insert(table)

    def _migrate(self) -> None:
        """Bring stores created by earlier versions to this schema."""
        self._add_columns(
            "books",
            {
                "origin": "VARCHAR(16) NOT NULL DEFAULT 'bundle'",
                "deleted": "BOOLEAN NOT NULL DEFAULT FALSE",
                # works and series (null on rows seeded before: serving reads the bundle's)
                "series": "TEXT",
                "series_position": "DOUBLE PRECISION" if not self.is_sqlite else "REAL",
                "work_id": "VARCHAR(300)",
            },
        )
        self._add_columns("impressions", {"bundle": "VARCHAR(200) NOT NULL DEFAULT ''"})
        self._migrate_event_ids()

    def _migrate_event_ids(self) -> None:
        """Event ids were unique across all users (one user's retry could swallow another's
        event); they are unique per user now. SQLite cannot drop a constraint: the table is
        copied into the new schema, in one transaction."""
        unique = sa.inspect(self.engine).get_unique_constraints("events")
        if not any(u["column_names"] == ["event_id"] for u in unique):
            return
        table = metadata.tables["events"]
        with self.engine.begin() as conn:
            if not self.is_sqlite:
                name = next(u["name"] for u in unique if u["column_names"] == ["event_id"])
                conn.exec_driver_sql(f'ALTER TABLE events DROP CONSTRAINT "{name}"')
                conn.exec_driver_sql(
                    "ALTER TABLE events ADD CONSTRAINT events_user_event UNIQUE (user_id, event_id)"
                )
                return
            conn.exec_driver_sql("ALTER TABLE events RENAME TO events_before_migration")
            for index in table.indexes:
                conn.exec_driver_sql(f"DROP INDEX IF EXISTS {index.name}")
            table.create(conn)
            columns = ", ".join(c.name for c in table.columns)
            conn.exec_driver_sql(
                f"INSERT INTO events ({columns}) SELECT {columns} FROM events_before_migration"
            )
            conn.exec_driver_sql("DROP TABLE events_before_migration")

    def _add_columns(self, table: str, added: dict[str, str]) -> None:
        """Add the columns (name -> DDL) that stores created by earlier versions lack."""
        present = {c["name"] for c in sa.inspect(self.engine).get_columns(table)}
        with self.engine.begin() as conn:
            for column, ddl in added.items():
                if column not in present:
                    conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {column} {ddl}")

    def _create_extras(self) -> str:
        """Full-text search (SQLite) and the per-store salt of user hashes; returns the salt."""
        with self.engine.begin() as conn:
            if self.is_sqlite:
                for statement in _FTS:
                    conn.exec_driver_sql(statement)
            # processes starting together on a new store (workers, replicas): the first
            # salt stored is everyone's
            conn.execute(
                self.insert(settings)
                .values(key="user_hash_salt", value=uuid.uuid4().hex)
                .on_conflict_do_nothing(index_elements=["key"])
            )
            salt = conn.execute(
                sa.select(settings.c.value).where(settings.c.key == "user_hash_salt")
            ).scalar()
        return str(salt)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")  # an acknowledged commit survives a crash
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()
