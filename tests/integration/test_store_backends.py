"""The store's interface on both backends: SQLite (embedded default) and a real PostgreSQL
server started for the test (skipped, with the reason, when PostgreSQL is not installed)."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

from recsys.stores.sql import Event, Store

pytestmark = pytest.mark.integration


def _pg_bin() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(candidates[-1]).parent if candidates else None


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    pytest.importorskip("psycopg", reason="the postgres extra (psycopg) is not installed")
    bin_dir = _pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    root = Path(tempfile.mkdtemp(prefix="recsys-pg-"))
    data, sockets = root / "data", root / "sock"
    sockets.mkdir()
    as_user: list[str] = []
    if os.getuid() == 0:  # initdb refuses root: run the server as the postgres user
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: cannot start PostgreSQL")
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres")
        shutil.chown(sockets, "postgres")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    init = subprocess.run(
        [*as_user, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"],
        capture_output=True,
        text=True,
        check=False,
    )
    if init.returncode != 0:
        pytest.skip(f"initdb failed: {init.stderr.strip()[:200]}")
    options = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off"
    start = subprocess.run(
        # -l: the server must not inherit our pipes (capturing them would wait forever)
        [
            *as_user,
            str(bin_dir / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            options,
            "-l",
            str(root / "server.log"),
            "-w",
            "start",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if start.returncode != 0:
        pytest.skip(f"pg_ctl start failed: {start.stderr.strip()[:200]}")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"],
            capture_output=True,
            check=False,
        )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    store = Store(url)
    yield store
    if request.param == "postgres":  # one server for the module: leave it empty
        import sqlalchemy as sa

        from recsys.stores.sql import metadata

        metadata.drop_all(store.engine)
        with store.engine.begin() as conn:
            conn.execute(sa.text("DROP TABLE IF EXISTS settings"))
    store.close()


def test_store_interface(store: Store) -> None:
    now = time.time()
    events = [
        Event("ann", "b1", "read", now - 30, None, "e1"),
        Event("ann", "b2", "view", now - 20, None, "e2"),
        Event("ann", "b3", "rate", now - 10, 8.0, "e3"),
        Event("bob", "b2", "purchase", now, None, "e4"),
    ]
    assert store.append(events) == (4, 0)
    assert store.append(events[:2]) == (0, 2)  # idempotent by event id
    assert store.serving_history("ann") == (False, ["b1", "b2", "b3"])
    assert [b for b, _, _ in store.history("bob")] == ["b2"]
    assert store.event_histories() == {"ann": ["b1", "b2", "b3"], "bob": ["b2"]}
    assert {b for b, _, _ in store.recent(now - 15)} == {"b3", "b2"}

    books = pl.DataFrame(
        {
            "book_id": ["b1", "b2", "b3"],
            "title": ["The Hobbit", "Dune Messiah", "Children of Dune"],
            "authors": ["J.R.R. Tolkien", "Frank Herbert", "Frank Herbert"],
            "year": [1937, 1969, 1976],
        }
    )
    assert store.seed_books(books) == 3
    assert store.seed_books(books) == 0  # only into an empty catalogue
    assert {b["book_id"] for b in store.search_books("herbert dune")} == {"b2", "b3"}
    assert [b["book_id"] for b in store.search_books("hobbit")] == ["b1"]
    store.put_book("b4", {"title": "Dune", "authors": "Frank Herbert", "tags": ["sf"]}, True)
    assert store.book("b4")["tags"] == ["sf"]
    with pytest.raises(KeyError):
        store.put_book("b4", {"title": "again"}, True)
    assert store.delete_book("b1")
    assert store.search_books("hobbit") == []
    assert store.books_frame().height == 3

    store.log_impressions(
        [
            {
                "request_id": "r1",
                "at": now,
                "user_id": "ann",
                "experiment": "x",
                "variant": "control",
                "books": "[]",
            },
            {
                "request_id": "r2",
                "at": now,
                "user_id": "bob",
                "experiment": "x",
                "variant": "treatment",
                "books": "[]",
            },
        ]
    )
    store.log_feedback("r2", "bob", "b2", "click")
    assert store.experiment_counts("x") == {"control": (1, 0), "treatment": (1, 1)}

    removed = store.delete_user("ann", "dpo")
    assert removed == {"events": 3, "profile": 1, "impressions": 1, "feedback": 0}
    assert store.serving_history("ann") == (True, [])
    assert store.deleted_filter(["ann", "bob"]) == {"ann"}
    entry = store.audit()[-1]
    assert (entry["actor"], entry["events"]) == ("dpo", 3)
    assert "ann" not in str(entry)


def test_catalogue_seeding_keeps_edits_and_delistings(store: Store) -> None:
    first = pl.DataFrame({"book_id": ["a1", "a2"], "title": ["One", "Two"]})
    assert store.seed_books(first) == 2
    store.put_book("new-1", {"title": "Fresh"}, True)
    assert store.delete_book("a2")
    assert not store.delete_book("a2")  # already delisted
    # the next bundle (same books plus one) is seeded on the next start
    second = pl.DataFrame({"book_id": ["a1", "a2", "a3"], "title": ["One!", "Two", "Three"]})
    assert store.seed_books(second) == 1
    assert store.book("a1")["title"] == "One"  # existing rows (and edits) are kept
    assert store.book("a2") is None  # a delisting survives re-seeding
    assert sorted(store.books_frame().get_column("book_id")) == ["a1", "a3", "new-1"]
    assert [b["book_id"] for b in store.added_books()] == ["new-1"]
    assert store.put_book("a2", {"title": "Two again"}, True)["title"] == "Two again"
    assert store.book("a2") is not None  # listed again
