"""Store backups on real SQLite and a real PostgreSQL (skipped, with the reason, where it is
not installed): every table round-trips exactly, a backup taken under concurrent writes is one
point in time, and bad input is one clear line, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import sqlalchemy as sa
from tests.helpers.hydra import compose_config
from tests.helpers.postgres_server import PostgresServer

from recsys.errors import RecsysError
from recsys.jobs.store_restore import main as restore_main
from recsys.stores import Event, open_store
from recsys.stores.backup import backup_store, manifest_path, restore_store
from recsys.stores.schema import metadata

pytestmark = pytest.mark.integration

NewUrl = Callable[[], str]  # a new, empty database on the backend under test


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer()
    server.start()
    try:
        yield server
    finally:
        server.remove()


def _populate(url: str) -> None:
    """Events of several users and types, catalogue edits (seed, edit, add, delist), an A/B
    experiment with impressions and feedback, and one erasure."""
    store = open_store(url)
    try:
        books = pl.DataFrame(
            {
                "book_id": ["b1", "b2", "b3"],
                "title": ["The Hobbit", "Dune", "Emma"],
                "authors": ["J.R.R. Tolkien", "Frank Herbert", "Jane Austen"],
                "year": [1937, 1965, 1815],
            }
        )
        store.catalogue.seed_books(books)
        store.catalogue.put_book("b2", {"title": "Dune (revised)", "tags": ["sf"]}, False)
        store.catalogue.put_book("n1", {"title": "New Book", "authors": "A. Writer"}, True)
        store.catalogue.delete_book("b3")
        store.events.append(
            [
                Event("ann", "b1", "read", 1.0, None, "e1"),
                Event("ann", "b2", "rate", 2.0, 4.5, "e2"),
                Event("ann", "n1", "view", 3.0, None, "e3"),
                Event("bob", "b2", "purchase", 4.0, None, "e1"),
                Event("bob", "b1", "want_to_read", 5.0, None, "e5"),
                Event("carol", "b1", "read", 6.0, None, "e6"),
            ]
        )
        store.experiments.log_impressions(
            [
                {
                    "request_id": request,
                    "at": 7.0,
                    "user_id": user,
                    "experiment": "x",
                    "variant": variant,
                    "books": '["b1", "b2"]',
                }
                for request, user, variant in [
                    ("r1", "ann", "control"),
                    ("r2", "bob", "treatment"),
                    ("r3", "carol", "treatment"),
                ]
            ]
        )
        store.experiments.log_feedback("r2", "bob", "b2", "click")
        store.experiments.log_feedback("r3", "carol", "b1", "click")
        store.users.delete_user("carol", "dpo")
    finally:
        store.close()


def _tables(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every store table, in primary-key order."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return {
                t.name: [
                    tuple(r) for r in conn.execute(sa.select(t).order_by(*t.primary_key.columns))
                ]
                for t in metadata.sorted_tables
            }
    finally:
        engine.dispose()


class BackupSuite:
    """The backup contract; a backend's test class provides the ``new_url`` fixture."""

    def test_round_trip_restores_every_table(self, new_url: NewUrl, tmp_path: Path) -> None:
        source, target, path = new_url(), new_url(), tmp_path / "store.backup"
        _populate(source)
        before = _tables(source)
        assert len(before["events"]) == 5  # carol's event went with her erasure
        assert len(before["deleted_users"]) == len(before["audit_log"]) == 1
        manifest = backup_store(source, path)
        assert manifest.tables == {name: len(rows) for name, rows in before.items()}
        open_store(target).close()  # a new, empty store: its own salt only, no data
        restore_store(path, target)
        assert _tables(target) == before
        store = open_store(target)
        try:  # the restored store serves: same salt (erasure holds), search, sequences
            assert store.users.is_deleted("carol")
            assert store.events.serving_history("carol") == (True, [])
            assert [b for b, _, _ in store.events.history("ann")] == ["b1", "b2", "n1"]
            assert store.experiments.experiment_counts("x") == {
                "control": (1, 0),
                "treatment": (1, 1),
            }
            assert store.catalogue.book("b3") is None
            edited = store.catalogue.book("b2") or {}
            assert (edited.get("title"), edited.get("tags")) == ("Dune (revised)", ["sf"])
            assert [b["book_id"] for b in store.catalogue.search_books("hobbit")] == ["b1"]
            assert store.events.append([Event("dan", "b1", "read", 8.0, None, "new")]) == (1, 0)
            store.experiments.log_feedback("r1", "ann", "b1", "click")
        finally:
            store.close()

    def test_backup_under_concurrent_writes_is_one_point_in_time(
        self, new_url: NewUrl, tmp_path: Path
    ) -> None:
        """Two writers append batches of 3 events (one transaction each, ids counting from
        0) throughout the backup: the restored copy holds, per writer, whole batches with ids
        0..n-1, everything acknowledged before the backup began, and the manifest's counts."""
        source, target, path = new_url(), new_url(), tmp_path / "store.backup"
        store = open_store(source)
        stop = threading.Event()
        acked = [0, 0]  # events acknowledged per writer
        failures: list[BaseException] = []

        def writer(w: int) -> None:
            try:
                while not stop.is_set():
                    i = acked[w]
                    ids = range(i, i + 3)
                    store.events.append(
                        [Event(f"w{w}", "b1", "view", 1.0, None, str(j)) for j in ids]
                    )
                    acked[w] = i + 3
            except BaseException as exc:  # reported below, not lost in the thread
                failures.append(exc)
                raise

        threads = [threading.Thread(target=writer, args=(w,), daemon=True) for w in (0, 1)]
        try:
            for thread in threads:
                thread.start()
            _wait(lambda: min(acked) >= 30 or bool(failures))
            before = list(acked)
            manifest = backup_store(source, path)
            after = list(acked)
            _wait(lambda: min(acked) >= max(after) + 30 or bool(failures))  # they went on
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=10)
            store.close()
        assert failures == []
        restore_store(path, target)
        rows = _tables(target)["events"]
        assert manifest.tables["events"] == len(rows) < sum(acked)
        for w in (0, 1):
            ids = sorted(int(r[1]) for r in rows if r[2] == f"w{w}")
            assert ids == list(range(len(ids))), f"writer {w}: not a prefix"
            assert len(ids) % 3 == 0, f"writer {w}: a batch split by the backup"
            assert before[w] <= len(ids) <= after[w] + 3  # + the batch acknowledged meanwhile
        assert manifest.tables["users"] == len(_tables(target)["users"]) == 2

    def test_a_target_holding_data_is_replaced_only_with_force(
        self, new_url: NewUrl, tmp_path: Path
    ) -> None:
        source, target, path = new_url(), new_url(), tmp_path / "store.backup"
        _populate(source)
        backup_store(source, path)
        store = open_store(target)
        store.events.append([Event("zed", "b9", "read", 1.0, None, "z1")])
        store.close()
        with pytest.raises(RecsysError, match=r"holds data \(1 events, 1 users\).*force=true"):
            restore_store(path, target)
        assert [r[2] for r in _tables(target)["events"]] == ["zed"]  # untouched
        restore_store(path, target, force=True)
        assert _tables(target) == _tables(source)


class TestSQLite(BackupSuite):
    @pytest.fixture
    def new_url(self, tmp_path: Path) -> NewUrl:
        return lambda: f"sqlite:///{tmp_path / uuid.uuid4().hex[:8]}.db"


class TestPostgres(BackupSuite):
    @pytest.fixture
    def new_url(self, postgres: PostgresServer) -> Iterator[NewUrl]:
        admin = sa.create_engine(postgres.url, isolation_level="AUTOCOMMIT")

        def create() -> str:
            name = f"store_{uuid.uuid4().hex[:8]}"
            with admin.connect() as conn:
                conn.exec_driver_sql(f"CREATE DATABASE {name}")
            return f"{postgres.url.rsplit('/', 1)[0]}/{name}"

        yield create
        admin.dispose()


def test_bad_input_is_a_clear_error(tmp_path: Path) -> None:
    """Each refusal names the problem and the fix; nothing needs a server."""
    source = f"sqlite:///{tmp_path / 'source.db'}"
    _populate(source)
    path = tmp_path / "store.backup"
    backup_store(source, path)
    (tmp_path / "notes.txt").write_text("not a backup")
    (tmp_path / "plain.db").write_bytes(b"")  # a SQLite database with no table
    target = f"sqlite:///{tmp_path / 'target.db'}"
    pg = "postgresql+psycopg://postgres:secret@127.0.0.1:1/recsys"  # nothing listens on port 1
    refused: list[tuple[Callable[[], Any], str]] = [
        (lambda: restore_store(tmp_path / "absent.backup", target), "no backup at"),
        (lambda: restore_store(tmp_path / "notes.txt", target), "has no manifest"),
        (lambda: restore_store(manifest_path(path), target), "is a manifest; name"),
        (lambda: restore_store(path, pg), "sqlite backup and store.url is a postgresql"),
        (lambda: backup_store(f"sqlite:///{tmp_path / 'absent.db'}", path), "no store at"),
        (lambda: backup_store(f"sqlite:///{tmp_path / 'plain.db'}", path), "not a recsys store"),
        (lambda: backup_store(f"sqlite:///{tmp_path / 'notes.txt'}", path), "not a database"),
        (lambda: backup_store("sqlite:///:memory:", path), "names no SQLite file"),
        (lambda: backup_store("mysql://db/recsys", path), "backups support sqlite"),
        (lambda: backup_store(pg, path, pg_bin=tmp_path), "no pg_dump in"),
    ]
    for call, message in refused:
        with pytest.raises(RecsysError, match=message):
            call()
    assert not (tmp_path / "target.db").exists()
    assert manifest_path(path).is_file()  # a refused backup left the last good one alone
    pytest.importorskip("psycopg", reason="the postgres extra (psycopg) is not installed")
    with pytest.raises(RecsysError, match=r"cannot reach the store at .*:\*\*\*@") as caught:
        backup_store(pg, path)
    assert "secret" not in str(caught.value)


def recsys(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "recsys", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "RECSYS_ROOT": str(tmp_path)},
        timeout=120,
        check=False,
    )


def test_cli_backs_up_restores_and_refuses_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = f"sqlite:///{tmp_path / 'source.db'}"
    _populate(source)
    path = tmp_path / "backups" / "store.backup"
    done = recsys(tmp_path, "store", "backup", f"store.url={source}", f"backup.path={path}")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("\n") == 1
    assert "5 events" in done.stdout
    assert path.is_file()
    assert manifest_path(path).is_file()

    done = recsys(tmp_path, "store", "restore", f"backup.path={path}", f"store.url={source}")
    assert done.returncode == 2
    assert "holds data" in done.stderr
    assert "force=true" in done.stderr
    assert "Traceback" not in done.stderr

    corrupt = tmp_path / "corrupt.backup"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    manifest_path(corrupt).write_text(manifest_path(path).read_text())
    fresh = tmp_path / "fresh.db"
    done = recsys(
        tmp_path, "store", "restore", f"backup.path={corrupt}", f"store.url=sqlite:///{fresh}"
    )
    assert done.returncode == 2
    assert "is corrupt: sha256" in done.stderr
    assert "Traceback" not in done.stderr
    assert not fresh.exists()

    cfg = compose_config(
        "store_restore", tmp_path, [f"backup.path={path}", f"store.url=sqlite:///{fresh}"]
    )
    restore_main(cfg)
    assert capsys.readouterr().out.startswith(f"restored {path}")
    assert _tables(f"sqlite:///{fresh}") == _tables(source)


def _wait(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)
