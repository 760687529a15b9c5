"""One store test suite, run on both backends (as gorse's ``baseTestSuite``): SQLite (the
embedded default) and a real PostgreSQL server started for the module (skipped, with the
reason, when PostgreSQL is not installed); and the null set of a server without a store."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
from tests.helpers.postgres_server import PostgresServer

from recsys.errors import RecsysError
from recsys.stores import Event, Impression, Stores, StoreUnavailable, null_stores, open_store

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    server = PostgresServer()
    server.start()
    try:
        yield server.url
    finally:
        server.remove()


class StoreSuite:
    """The role stores' contract; a backend's test class provides the ``url`` fixture."""

    @pytest.fixture
    def store(self, url: str) -> Iterator[Stores]:
        store = open_store(url)
        yield store
        _empty(store)

    def test_event_ids_are_unique_per_user(self, store: Stores) -> None:
        """An event id makes one user's retries idempotent; another user's event with the
        same id is another event (it was silently dropped before)."""
        now = time.time()
        assert store.events.append([Event("ann", "b1", "read", now, None, "same")]) == (1, 0)
        assert store.events.append([Event("bob", "b2", "read", now, None, "same")]) == (1, 0)
        assert store.events.append([Event("bob", "b2", "read", now, None, "same")]) == (0, 1)
        both = [
            Event("cy", "b1", "read", now, None, "x"),
            Event("dee", "b1", "read", now, None, "x"),
        ]
        assert [e.user_id for e in store.events.append_new(both)] == ["cy", "dee"]
        assert store.events.event_histories() == {
            "ann": ["b1"],
            "bob": ["b2"],
            "cy": ["b1"],
            "dee": ["b1"],
        }

    def test_history_frame_holds_history_events_oldest_first(self, url: str) -> None:
        """Retraining reads every history event at once: only the store's history types,
        oldest first, an erased user's events gone; the null set holds none."""
        store = open_store(url, history_types=["read", "rate"])
        try:
            store.events.append(
                [
                    Event("ann", "b2", "rate", 20.0, 4.0, "e1"),
                    Event("ann", "b1", "read", 10.0, None, "e2"),
                    Event("bob", "b3", "view", 5.0, None, "e3"),
                    Event("cy", "b1", "read", 1.0, None, "e4"),
                ]
            )
            store.users.delete_user("cy", actor="test")
            frame = store.events.history_frame()
            assert frame.rows() == [
                ("ann", "b1", "read", None, 10.0),
                ("ann", "b2", "rate", 4.0, 20.0),
            ]
        finally:
            _empty(store)
        assert null_stores().events.history_frame().columns == frame.columns

    def test_a_store_from_before_is_migrated(self, url: str) -> None:
        """A store written when event ids were unique across users opens with its events
        kept and per-user ids from then on (twice: the migration runs once)."""
        import sqlalchemy as sa

        old = sa.MetaData()
        table = sa.Table(
            "events",
            old,
            sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("event_id", sa.String(128), nullable=False, unique=True),
            sa.Column("user_id", sa.String(200), nullable=False),
            sa.Column("book_id", sa.String(200), nullable=False),
            sa.Column("type", sa.String(32), nullable=False),
            sa.Column("value", sa.Float, nullable=True),
            sa.Column("ts", sa.Float, nullable=False),
            sa.Column("received_at", sa.Float, nullable=False),
            sa.Index("events_user_ts", "user_id", "ts"),
            sa.Index("events_ts", "ts"),
        )
        engine = sa.create_engine(url)
        old.create_all(engine)
        row = {"book_id": "b1", "type": "read", "value": None, "received_at": 0.0}
        with engine.begin() as conn:
            conn.execute(table.insert(), [{**row, "event_id": "e1", "user_id": "ann", "ts": 1.0}])
            conn.execute(table.insert(), [{**row, "event_id": "e2", "user_id": "ann", "ts": 2.0}])
        engine.dispose()
        for _ in range(2):
            store = open_store(url)
            assert [b for b, _, _ in store.events.history("ann")] == ["b1", "b1"]
            store.close()
        store = open_store(url)
        try:
            assert store.events.append([Event("bob", "b2", "read", 3.0, None, "e1")]) == (1, 0)
            assert store.events.append([Event("ann", "b2", "read", 3.0, None, "e1")]) == (0, 1)
            assert store.events.append([Event("ann", "b3", "read", 4.0)]) == (1, 0)
            assert [b for b, _, _ in store.events.history("ann")] == ["b1", "b1", "b3"]
        finally:
            _empty(store)

    def test_impressions_from_before_get_a_bundle_column(self, url: str) -> None:
        """Impressions logged before the bundle was recorded open with bundle ''."""
        import sqlalchemy as sa

        old = sa.MetaData()
        table = sa.Table(
            "impressions",
            old,
            sa.Column("request_id", sa.String(128), primary_key=True),
            sa.Column("at", sa.Float, nullable=False),
            sa.Column("user_id", sa.String(200), nullable=False),
            sa.Column("experiment", sa.String(200), nullable=False),
            sa.Column("variant", sa.String(200), nullable=False),
            sa.Column("books", sa.Text, nullable=False),
        )
        engine = sa.create_engine(url)
        old.create_all(engine)
        row = {"at": 1.0, "user_id": "ann", "experiment": "x", "variant": "a", "books": "[]"}
        with engine.begin() as conn:
            conn.execute(table.insert(), [{**row, "request_id": "old"}])
        engine.dispose()
        store = open_store(url)
        try:
            assert store.experiments.impression("old") == Impression("ann", "x", "a", "", False)
            store.experiments.log_impressions([{**row, "request_id": "new", "bundle": "v2"}])
            assert store.experiments.impression("new") == Impression("ann", "x", "a", "v2", False)
        finally:
            _empty(store)

    def test_books_from_before_get_works_and_series(self, url: str) -> None:
        """A catalogue seeded before works and series opens with them empty; writes take
        them (given or derived), and an edit that leaves them alone keeps them."""
        import sqlalchemy as sa

        old = sa.MetaData()
        table = sa.Table(
            "books",
            old,
            sa.Column("book_id", sa.String(200), primary_key=True),
            sa.Column("title", sa.Text, nullable=True),
            sa.Column("authors", sa.Text, nullable=True),
            sa.Column("year", sa.Integer, nullable=True),
            sa.Column("publisher", sa.Text, nullable=True),
            sa.Column("language", sa.String(32), nullable=True),
            sa.Column("tags", sa.Text, nullable=False),
            sa.Column("cover_url", sa.Text, nullable=True),
            sa.Column("updated_at", sa.Float, nullable=False),
        )
        engine = sa.create_engine(url)
        old.create_all(engine)
        with engine.begin() as conn:
            conn.execute(
                table.insert(),
                [{"book_id": "b1", "title": "Dune (Dune, #1)", "tags": "[]", "updated_at": 0.0}],
            )
        engine.dispose()
        store = open_store(url)
        try:
            frame = store.catalogue.books_frame()
            assert frame.row(0, named=True)["work_id"] is None  # the bundle's apply (serving)
            given = {"title": "Dune Messiah", "series": "Dune", "series_position": 2.0}
            book = store.catalogue.put_book("b2", given, create=True)
            assert (book["series"], book["series_position"]) == ("Dune", 2.0)
            assert book["work_id"] == "t:dune messiah|"
            kept = store.catalogue.put_book("b2", {"authors": "Frank Herbert"}, create=False)
            assert kept["series"] == "Dune"
            assert kept["work_id"] == "t:dune messiah|"  # a work id, once given, stays
            # a row from before: an edit that does not name its keys leaves them to the
            # bundle's (serving reads those where the store has none)
            edited = store.catalogue.put_book("b1", {"year": 1965}, create=False)
            assert (edited["series"], edited["work_id"]) == (None, None)
        finally:
            _empty(store)

    def test_events(self, store: Stores) -> None:
        now = time.time()
        events = [
            Event("ann", "b1", "read", now - 30, None, "e1"),
            Event("ann", "b2", "view", now - 20, None, "e2"),
            Event("ann", "b3", "rate", now - 10, 8.0, "e3"),
            Event("bob", "b2", "purchase", now, None, "e4"),
        ]
        assert store.events.append(events) == (4, 0)
        assert store.events.append(events[:2]) == (0, 2)  # idempotent by event id
        assert store.events.serving_history("ann") == (False, ["b1", "b2", "b3"])
        assert [b for b, _, _ in store.events.history("bob")] == ["b2"]
        assert store.events.event_histories() == {"ann": ["b1", "b2", "b3"], "bob": ["b2"]}
        assert {b for b, _, _ in store.events.recent(now - 15)} == {"b3", "b2"}
        assert store.users.user("ann") is not None  # a profile on the first event

    def test_catalogue(self, store: Stores) -> None:
        books = pl.DataFrame(
            {
                "book_id": ["b1", "b2", "b3"],
                "title": ["The Hobbit", "Dune Messiah", "Children of Dune"],
                "authors": ["J.R.R. Tolkien", "Frank Herbert", "Frank Herbert"],
                "year": [1937, 1969, 1976],
            }
        )
        assert store.catalogue.seed_books(books) == 3
        assert store.catalogue.seed_books(books) == 0  # only into an empty catalogue
        found = {b["book_id"] for b in store.catalogue.search_books("herbert dune")}
        assert found == {"b2", "b3"}
        assert [b["book_id"] for b in store.catalogue.search_books("hobbit")] == ["b1"]
        dune = {"title": "Dune", "authors": "Frank Herbert", "tags": ["sf"]}
        store.catalogue.put_book("b4", dune, True)
        assert store.catalogue.book("b4")["tags"] == ["sf"]
        with pytest.raises(KeyError):
            store.catalogue.put_book("b4", {"title": "again"}, True)
        with pytest.raises(LookupError):
            store.catalogue.put_book("nope", {"title": "missing"}, False)
        assert store.catalogue.delete_book("b1")
        assert store.catalogue.search_books("hobbit") == []
        assert store.catalogue.books_frame().height == 3

    def test_seeding_keeps_edits_and_delistings(self, store: Stores) -> None:
        first = pl.DataFrame({"book_id": ["a1", "a2"], "title": ["One", "Two"]})
        assert store.catalogue.seed_books(first) == 2
        store.catalogue.put_book("new-1", {"title": "Fresh"}, True)
        assert store.catalogue.delete_book("a2")
        assert not store.catalogue.delete_book("a2")  # already delisted
        # the next bundle (same books plus one) is seeded on the next start
        second = pl.DataFrame({"book_id": ["a1", "a2", "a3"], "title": ["One!", "Two", "Three"]})
        assert store.catalogue.seed_books(second) == 1  # a3 only
        assert store.catalogue.seed_books(second) == 0
        listed = store.catalogue.listed(second)  # seeds (nothing new), the listed catalogue
        assert sorted(listed.get_column("book_id")) == ["a1", "a3", "new-1"]
        assert store.catalogue.book("a1")["title"] == "One"  # existing rows (and edits) are kept
        assert store.catalogue.book("a2") is None  # a delisting survives re-seeding
        assert [b["book_id"] for b in store.catalogue.added_books()] == ["new-1"]
        again = store.catalogue.put_book("a2", {"title": "Two again"}, True)
        assert again["title"] == "Two again"
        assert store.catalogue.book("a2") is not None  # listed again

    def test_experiments(self, store: Stores) -> None:
        now = time.time()
        store.experiments.log_impressions(
            [
                {
                    "request_id": f"r{i}",
                    "at": now,
                    "user_id": user,
                    "experiment": "x",
                    "variant": variant,
                    "books": "[]",
                    "bundle": f"v{i}",
                }
                for i, (user, variant) in enumerate([("ann", "control"), ("bob", "treatment")])
            ]
        )
        served = Impression("bob", "x", "treatment", "v1", False)
        assert store.experiments.impression("r1") == served
        assert store.experiments.impression("r9") is None
        store.experiments.log_feedback("r1", "bob", "b2", "add_to_list")  # not a click
        assert store.experiments.impression("r1") == served
        store.experiments.log_feedback("r1", "bob", "b2", "click")
        assert store.experiments.impression("r1") == Impression("bob", "x", "treatment", "v1", True)
        assert store.experiments.impression("r0") == Impression("ann", "x", "control", "v0", False)
        store.experiments.log_feedback("r1", "bob", "b3", "click")  # one impression, 2 clicks
        counts = store.experiments.experiment_counts("x")
        assert counts == {"control": (1, 0), "treatment": (1, 1)}
        assert store.experiments.experiment_counts("other") == {}

    def test_experiment_series_buckets_impressions_by_time(self, store: Stores) -> None:
        hour = 3600
        start = (int(time.time()) // hour - 3) * hour  # three whole hours ago
        plan = [
            (0, "control", True),
            (10, "control", False),
            (hour + 5, "control", False),
            (hour + 6, "treatment", True),
            (hour - 0.4, "control", False),  # the first hour's last second (never rounded up)
            (3 * hour - 1, "treatment", True),
        ]
        store.experiments.log_impressions(
            [
                {
                    "request_id": f"s{i}",
                    "at": start + offset,
                    "user_id": f"u{i}",
                    "experiment": "series",
                    "variant": variant,
                    "books": "[]",
                    "bundle": "v",
                }
                for i, (offset, variant, _) in enumerate(plan)
            ]
        )
        for i, (_, _, click) in enumerate(plan):
            if click:
                store.experiments.log_feedback(f"s{i}", f"u{i}", "b1", "click")
                store.experiments.log_feedback(f"s{i}", f"u{i}", "b2", "click")  # counted once
        assert store.experiments.experiment_series("series", hour) == [
            (float(start), "control", 3, 1),
            (float(start + hour), "control", 1, 0),
            (float(start + hour), "treatment", 1, 1),
            (float(start + 2 * hour), "treatment", 1, 1),
        ]
        assert store.experiments.experiment_series("none", hour) == []

    def test_impressions_at_the_longest_accepted_ids_are_stored(self, store: Stores) -> None:
        """Ids as long as the API and the experiments file accept (200 characters, not bytes:
        non-ASCII), with a server-chosen impression id: a batch of them is stored whole (an
        over-long id once dropped a whole impression batch on PostgreSQL)."""
        longest = "é" * 200
        rows = [
            {
                "request_id": f"{i:0128d}",
                "at": time.time(),
                "user_id": f"{i}{longest[1:]}",
                "experiment": longest,
                "variant": "v" * 199 + str(i),
                "books": "[]",
                "bundle": "20261130T235228.018-nogit",
            }
            for i in range(3)
        ]
        store.experiments.log_impressions(rows)
        for row in rows:
            stored = store.experiments.impression(row["request_id"])
            assert stored is not None
            assert (stored.user_id, stored.variant) == (row["user_id"], row["variant"])
        assert sum(n for n, _ in store.experiments.experiment_counts(longest).values()) == 3

    def test_friends_are_each_followees_latest_reads(self, store: Stores) -> None:
        """Serving reads at most FRIEND_EVENTS history events of each followee, the latest,
        oldest first; marks and other readers' events are not among them."""
        from recsys.stores.events import FRIEND_EVENTS

        many = FRIEND_EVENTS + 10
        store.events.append([Event("dan", f"d{i}", "read", 1000.0 + i) for i in range(many)])
        store.events.append([Event("dan", "x", "not_interested", 5000.0)])
        store.events.append([Event("eve", "e1", "view", 10.0), Event("zed", "z1", "read", 1.0)])
        assert store.users.follow("cy", "dan")
        assert store.users.follow("cy", "eve")
        friends = store.events.serving_reads("cy").friends
        assert friends[:2] == [("dan", ""), ("eve", "")]
        dan = [b for f, b in friends[2:] if f == "dan"]
        assert dan == [f"d{i}" for i in range(10, many)]
        assert [b for f, b in friends[2:] if f == "eve"] == ["e1"]
        assert friends[2] == ("eve", "e1")  # oldest first across followees
        assert store.users.followers("dan") == ["cy"]

    def test_erasure(self, store: Stores) -> None:
        now = time.time()
        store.events.append(
            [Event("ann", f"b{i}", "read", now - i, None, f"e{i}") for i in (1, 2, 3)]
        )
        store.events.append([Event("bob", "b2", "purchase", now, None, "e4")])
        row = {"at": now, "experiment": "x", "variant": "control", "books": "[]"}
        store.experiments.log_impressions([{**row, "request_id": "r0", "user_id": "ann"}])
        assert store.users.follow("ann", "bob")
        assert store.users.follow("cy", "ann")
        assert not store.users.follow("cy", "ann")  # once
        assert store.users.follow("cy", "bob")
        # followees once (oldest follow first), then their history events, oldest first
        assert store.events.serving_reads("cy").friends == [
            ("ann", ""),
            ("bob", ""),
            ("ann", "b3"),
            ("ann", "b2"),
            ("ann", "b1"),
            ("bob", "b2"),
        ]
        removed = store.users.delete_user("ann", "dpo")
        assert removed == {
            "events": 3,
            "profile": 1,
            "impressions": 1,
            "feedback": 0,
            "explorations": 0,
            "reviews": 0,
            "follows": 2,  # whom ann followed and who followed ann
        }
        assert store.users.following("cy") == [("bob", store.users.following("cy")[0][1])]
        assert store.events.serving_reads("cy").friends == [("bob", ""), ("bob", "b2")]
        assert store.events.serving_history("ann") == (True, [])
        assert store.events.serving_history("bob") == (False, ["b2"])
        assert store.users.is_deleted("ann")
        assert not store.users.is_deleted("bob")
        assert store.users.deleted_filter(["ann", "bob"]) == {"ann"}
        entry = store.users.audit()[-1]
        assert (entry["actor"], entry["events"]) == ("dpo", 3)
        assert "ann" not in str(entry)

    def test_serving_reads_in_each_thread_see_every_commit(self, store: Stores) -> None:
        """The request path's read (a pool of sqlite3 connections on SQLite) sees an event
        and an erasure committed by another connection at once, in every thread, and reads
        again after the store was closed."""
        from concurrent.futures import ThreadPoolExecutor

        def histories() -> list[tuple[bool, list[str]]]:
            with ThreadPoolExecutor(4) as pool:  # four threads, each reading twice
                return list(pool.map(lambda _: store.events.serving_history("ann"), range(8)))

        assert histories() == [(False, [])] * 8  # each thread's connection now open
        store.events.append([Event("ann", "b1", "read", 1.0)])
        assert histories() == [(False, ["b1"])] * 8
        store.users.delete_user("ann", "dpo")
        assert histories() == [(True, [])] * 8
        assert store.db is not None
        store.db.close()
        assert store.events.serving_history("ann") == (True, [])


def _empty(store: Stores) -> None:
    """Close ``store``; on the module's one PostgreSQL server, drop its tables first."""
    if store.db is not None and not store.db.is_sqlite:
        import sqlalchemy as sa

        from recsys.stores.schema import metadata

        metadata.drop_all(store.db.engine)
        with store.db.engine.begin() as conn:
            conn.execute(sa.text("DROP TABLE IF EXISTS settings"))
    store.close()


class TestSQLite(StoreSuite):
    @pytest.fixture
    def url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path / 'store.db'}"

    def test_serving_reads_from_short_lived_threads_keep_few_connections(
        self, store: Stores
    ) -> None:
        """Under Ray Serve each request ran in a new thread: 200 reads, each from a thread of
        its own, leave at most READERS_KEPT connections (open files) behind, not one per
        thread."""
        import os
        import threading

        from recsys.stores.engine import READERS_KEPT

        def open_files() -> int:
            return len(os.listdir("/proc/self/fd"))

        store.events.serving_reads("ann")
        before = open_files()
        for _ in range(200):
            reader = threading.Thread(target=store.events.serving_reads, args=("ann",))
            reader.start()
            reader.join()
        assert open_files() - before <= 2 * READERS_KEPT  # a connection is a file and its WAL

    def test_a_store_gone_is_unavailable_to_serving_reads(self, tmp_path: Path) -> None:
        """The request path's read of a SQLite file that cannot be opened (its folder
        removed) is StoreUnavailable, as every read: serving degrades, never a 500."""
        import shutil

        folder = tmp_path / "gone"
        store = open_store(f"sqlite:///{folder / 'store.db'}")
        store.close()
        shutil.rmtree(folder)
        with pytest.raises(StoreUnavailable, match="unreachable"):
            store.events.serving_reads("ann")


class TestPostgres(StoreSuite):
    @pytest.fixture
    def url(self, postgres_url: str) -> str:
        return postgres_url


def test_null_stores_serve_the_bundle_and_refuse_the_rest() -> None:
    store = open_store(None)
    assert not store.persistent
    assert store.url is None
    assert store.events.serving_history("ann") == (False, [])  # nothing beyond the bundle
    assert list(store.events.recent(0.0)) == []
    assert store.events.event_histories() == {}
    assert store.users.deleted_filter(["ann"]) == set()
    books = pl.DataFrame({"book_id": ["a1"], "title": ["One"]})
    assert store.catalogue.listed(books) is books
    assert store.catalogue.added_books() == []
    refused = [
        lambda: store.events.append([Event("ann", "b1", "read", 0.0)]),
        lambda: store.events.history("ann"),
        lambda: store.catalogue.book("a1"),
        lambda: store.catalogue.search_books("one"),
        lambda: store.catalogue.put_book("a2", {}, True),
        lambda: store.catalogue.delete_book("a1"),
        lambda: store.users.is_deleted("ann"),
        lambda: store.users.delete_user("ann", "dpo"),
        lambda: store.experiments.log_feedback("r", "ann", "b1", "click"),
        lambda: store.experiments.experiment_series("x", 3600),
        lambda: store.experiments.impression("r"),
        lambda: store.experiments.experiment_counts("x"),
    ]
    for call in refused:
        with pytest.raises(StoreUnavailable, match=r"store\.url=null"):
            call()


def test_open_existing_only(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'absent.db'}"
    assert not open_store(url, create=False).persistent  # batch jobs never create a store
    assert not (tmp_path / "absent.db").exists()
    with pytest.raises(RecsysError, match="unknown event type"):
        open_store(url, ["read", "skim"])
