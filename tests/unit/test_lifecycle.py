"""Retraining's pieces without training: the holdout carve, the gate, the lock, stored events
added to the base data, the config hash and the row-addressed recommender."""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp

from recsys.data import schema as S
from recsys.data.io import build_dataset
from recsys.errors import DataError, RecsysError
from recsys.inference.popularity import PopularityRecommender
from recsys.lifecycle.compare import HoldoutRecommender, HoldoutScore
from recsys.lifecycle.gate import GateRules, judge
from recsys.lifecycle.holdout import HoldoutSettings, carve_holdout
from recsys.lifecycle.lock import AlreadyRunning, exclusive
from recsys.lifecycle.retrain import with_stored_events
from recsys.stores import Event, open_store


def _interactions(rows: list[tuple[str, str, int | None]]) -> pl.DataFrame:
    frame = pl.DataFrame(rows, schema=["user_id", "book_id", "timestamp"], orient="row")
    return build_dataset("t", frame).interactions


def test_the_holdout_is_each_users_latest_books_production_did_not_train_on() -> None:
    rows = [("ann", f"b{i}", 100 + i) for i in range(6)]  # b5 then b4 are the latest
    rows += [("bob", f"b{i}", 10 + i) for i in range(6)]
    rows += [("cy", "b1", 1), ("cy", "b2", 2), ("cy", "b3", 3)]  # 3 books: too few to keep 3
    seen = pl.DataFrame({"user_id": ["bob"], "book_id": ["b5"]})  # production trained on it
    remaining, holdout = carve_holdout(_interactions(rows), seen, HoldoutSettings(n=2))
    positives = dict(holdout.positives.iter_rows())
    assert {u: sorted(b) for u, b in positives.items()} == {
        "ann": ["b4", "b5"],
        "bob": ["b3", "b4"],  # b5 is newer, but production learnt it
    }
    histories = dict(holdout.histories.iter_rows())
    assert histories["ann"] == ["b0", "b1", "b2", "b3"]  # oldest first
    assert histories["bob"] == ["b0", "b1", "b2", "b5"]
    assert holdout.users == ["ann", "bob"]  # the same order in both frames
    assert holdout.spec["kind"] == "latest by time"
    assert remaining.height == len(rows) - 4
    held = remaining.join(
        pl.DataFrame({"user_id": ["ann"], "book_id": ["b5"]}), on=[S.USER_ID, S.BOOK_ID]
    )
    assert held.height == 0


def test_the_most_recently_active_users_are_taken_first() -> None:
    rows = [(u, f"b{i}", start + i) for u, start in (("old", 0), ("new", 500)) for i in range(5)]
    _, holdout = carve_holdout(_interactions(rows), None, HoldoutSettings(n=1, max_users=1))
    assert holdout.users == ["new"]


def test_undated_data_gets_a_seeded_carve() -> None:
    rows = [(f"u{u}", f"b{i}", None) for u in range(20) for i in range(8)]
    carves = [
        carve_holdout(_interactions(rows), None, HoldoutSettings(n=2, seed=seed))[1]
        for seed in (0, 0, 1)
    ]
    assert carves[0].spec["kind"] == "seeded carve"
    assert carves[0].positives.equals(carves[1].positives)
    assert not carves[0].positives.equals(carves[2].positives)


def test_no_user_to_hold_out_is_a_clear_error() -> None:
    rows = [("ann", "b1", 1), ("ann", "b2", 2)]
    with pytest.raises(DataError, match=r"holdout\.min_history"):
        carve_holdout(_interactions(rows), None, HoldoutSettings(n=1, min_history=3))


def _score(version: str, recall: float, p99: float = 10.0) -> HoldoutScore:
    return HoldoutScore(version, {"recall@20": recall, "coverage@20": 0.5}, p99, 0, 0)


def test_the_gate_compares_with_production_and_names_what_failed() -> None:
    rules = GateRules({"recall@20": 0.98}, {"coverage@20": 0.1}, max_p99_ms=50.0)
    passed = judge(rules, _score("c", 0.40), _score("p", 0.405))
    assert passed.passed
    assert [r.threshold for r in passed.rows] == [None, pytest.approx(0.3969), 0.1, 50.0]
    failed = judge(rules, _score("c", 0.39, p99=80.0), _score("p", 0.405))
    assert not failed.passed
    assert failed.reasons == (
        "recall@20 ≥ 0.98 × production: candidate 0.39, production 0.405, threshold 0.3969",
        "p99 latency ≤ 50 ms: candidate 80, production 10, threshold 50",
    )
    assert failed.as_dict()["rows"][1]["production"] == 0.405


def test_without_production_only_the_candidates_own_rules_decide() -> None:
    rules = GateRules({"recall@20": 0.98}, {"coverage@20": 0.6})
    result = judge(rules, _score("c", 0.1), None)
    assert [r.passed for r in result.rows] == [True, True, False]
    assert result.rows[1].note == "no production to compare"
    assert result.reasons == ("coverage@20 ≥ 0.6: candidate 0.5, threshold 0.6",)


def test_a_candidate_that_does_not_verify_fails_every_rule() -> None:
    rules = GateRules({"recall@20": 0.98}, {"coverage@20": 0.1}, max_p99_ms=50.0)
    result = judge(rules, None, _score("p", 0.4), verify_error="checksum mismatch for x")
    assert not any(r.passed for r in result.rows)
    assert result.reasons[0] == "bundle verifies: candidate failed; checksum mismatch for x"


def test_gate_rules_must_name_reported_metrics() -> None:
    GateRules({"ndcg@20": 0.98}, {"coverage@50": 0.1}).check([10, 20, 50])
    with pytest.raises(RecsysError, match=r"gate\.floors names 'recall@100'"):
        GateRules({}, {"recall@100": 0.1}).check([10, 20, 50])


def test_the_lock_admits_one_holder_and_names_it(tmp_path: Path) -> None:
    path = tmp_path / "retrain.lock"
    path.write_text("pid 1, since long ago\n")  # left by a dead run: no flock, no block
    with exclusive(path):
        assert path.read_text().startswith(f"pid {os.getpid()}, since ")
        with (
            pytest.raises(AlreadyRunning, match=rf"another retrain is running \(pid {os.getpid()}"),
            exclusive(path),
        ):
            pass
    with exclusive(path):  # released
        pass


def test_a_run_refused_as_the_holder_starts_still_names_the_holder(tmp_path: Path) -> None:
    """The holder writes its line just after taking the lock; a refusal in between waits for it."""
    path = tmp_path / "retrain.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held, nothing written yet
    writer = threading.Timer(0.2, lambda: os.pwrite(fd, b"pid 4242, since 2026-12-01\n", 0))
    writer.start()
    try:
        with (
            pytest.raises(AlreadyRunning, match=r"\(pid 4242, since 2026-12-01\)"),
            exclusive(path),
        ):
            pass
    finally:
        writer.join()
        os.close(fd)


def test_stored_events_join_the_base_data_without_erased_users(tmp_path: Path) -> None:
    base = build_dataset(
        "t",
        pl.DataFrame({"user_id": ["ann", "ann", "bob"], "book_id": ["b1", "b2", "b1"]}),
        pl.DataFrame({"book_id": ["b1", "b2"], "title": ["One", "Two"]}),
    )
    store = open_store(f"sqlite:///{tmp_path}/s.db")
    store.events.append([Event("ann", "b1", "read", 50.0), Event("bob", "b3", "rate", 150.0, 4.0)])
    store.events.append([Event("cy", "b1", "read", 60.0), Event("dee", "b2", "read", 70.0)])
    store.users.delete_user("cy", actor="test")
    store.events.append([Event("cy", "b2", "read", 200.0)])  # after the erasure: still left out
    store.catalogue.put_book("b3", {"title": "Three", "authors": "A. Writer"}, create=True)
    data = with_stored_events(base, store, cutoff=100.0)
    store.close()
    inter = data.dataset.interactions.sort(S.USER_ID, S.BOOK_ID)
    assert inter.select(S.USER_ID, S.BOOK_ID, S.WEIGHT, S.RATING, S.TIMESTAMP).rows() == [
        ("ann", "b1", 2.0, None, 50),  # read again: merged as readers merge duplicates
        ("ann", "b2", 1.0, None, None),
        ("bob", "b1", 1.0, None, None),
        ("bob", "b3", 1.0, 4.0, 150),
        ("dee", "b2", 1.0, None, 70),
    ]
    assert (data.stored_events, data.new_events, data.new_books, data.erased_users) == (3, 1, 1, 1)
    books = dict(data.dataset.books.select(S.BOOK_ID, "title").iter_rows())
    assert books == {"b1": "One", "b2": "Two", "b3": "Three"}


def test_marks_leave_the_positives_and_go_in_as_negatives(tmp_path: Path) -> None:
    """A book read then disliked is no positive; not-interested marks of erased readers and
    withdrawn marks are not used; "less of this author" makes the author's unread books
    negatives and leaves the positives alone."""
    from recsys.data.prepared import BOOK_IDX, USER_IDX, PreparedData, prepare
    from recsys.data.split import fitting_all, random_holdout

    base = build_dataset(
        "t",
        pl.DataFrame(
            {
                "user_id": ["ann", "ann", "ann", "bob", "bob"],
                "book_id": ["b1", "b2", "b3", "b1", "b2"],
            }
        ),
        pl.DataFrame(
            {
                "book_id": ["b1", "b2", "b3", "b4", "b5"],
                "authors": ["A. One", "B. Two", "B. Two", "B. Two", None],
            }
        ),
    )
    store = open_store(f"sqlite:///{tmp_path}/s.db")
    store.events.append(
        [
            Event("ann", "b2", "dislike", 10.0),  # read, then disliked
            Event("ann", "b9", "not_interested", 11.0),  # a book nobody read
            Event("bob", "b3", "not_interested", 12.0),
            Event("bob", "b3", "dislike", 13.0),  # the same book twice: one mark
            Event("bob", "b2", "less_of_author", 14.0),
            Event("cy", "b1", "read", 15.0),
            Event("cy", "b3", "dislike", 16.0),
            Event("dee", "b1", "dislike", 17.0),
        ]
    )
    store.events.forget_preferences("dee")  # withdrawn
    store.users.delete_user("cy", actor="test")
    data = with_stored_events(base, store, cutoff=None)
    # marks after production's cut-off are new data: a retrain does not skip them
    assert with_stored_events(base, store, cutoff=12.5).new_marks == 2  # bob's two, at 13, 14
    store.close()
    pairs = sorted(data.dataset.interactions.select(S.USER_ID, S.BOOK_ID).rows())
    assert pairs == [("ann", "b1"), ("ann", "b3"), ("bob", "b1"), ("bob", "b2")]
    marks = data.dataset.marks
    assert marks is not None
    # bob's "less of B. Two" on b2 (read: stays a positive) adds b4, the author's unread
    # book; b3 was marked already
    assert sorted(marks.rows()) == [("ann", "b2"), ("ann", "b9"), ("bob", "b3"), ("bob", "b4")]
    assert data.marks == 4

    prepared = prepare(data.dataset, fitting_all(random_holdout))
    # b9 is in no vocabulary (never read, not in the catalogue): it cannot be a negative
    assert sorted(prepared.marks.select(S.USER_ID, S.BOOK_ID).rows()) == [
        ("ann", "b2"),
        ("bob", "b3"),
        ("bob", "b4"),
    ]
    assert (prepared.marks.get_column(USER_IDX) >= 2).all()
    assert (prepared.marks.get_column(BOOK_IDX) >= 2).all()
    loaded = PreparedData.load(prepared.save(tmp_path / "prepared"))
    assert loaded.marks.equals(prepared.marks)
    assert loaded.dataset().marks is not None


def test_less_of_an_author_reaches_past_the_books_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """The author's books the reader read are left out before the cap, so a reader who read
    the author's first books still gets negatives (the unread ones, catalogue order)."""
    from recsys.lifecycle import retrain

    monkeypatch.setattr(retrain, "AUTHOR_BOOKS", 2)
    books = pl.DataFrame({"book_id": [f"b{i}" for i in range(6)], "authors": ["A"] * 5 + ["Z"]})
    read = pl.DataFrame({"user_id": ["ann"] * 3, "book_id": ["b0", "b1", "b2"]})
    marks = pl.DataFrame({"user_id": ["ann"], "book_id": ["b1"], "type": ["less_of_author"]})
    assert retrain.by_author(marks, books, read).rows() == [("ann", "b3"), ("ann", "b4")]
    unread = pl.DataFrame({"user_id": ["ann"], "book_id": ["b5"]})
    assert retrain.by_author(marks, books, unread).rows() == [("ann", "b1"), ("ann", "b0")]


def test_holdout_rows_without_a_known_book_get_the_fallback() -> None:
    popularity = PopularityRecommender(np.array([0, 0, 5, 4, 3, 2], dtype=float))

    class Model:
        n_books = 6

        def recommend(
            self, users: np.ndarray, history: sp.csr_matrix, k: int, exclude_seen: bool = True
        ) -> tuple[np.ndarray, np.ndarray]:
            assert users.tolist() == [7]  # the bundle's index of the holdout row's user
            return np.array([[5, 4]]), np.array([[1.0, 0.5]], dtype=np.float32)

    routed = HoldoutRecommender(Model(), np.array([7, 1]), popularity)
    history = sp.csr_matrix(([1.0], ([0], [2])), shape=(2, 6))  # row 1: nothing known
    top, _ = routed.recommend(np.array([0, 1]), history, 2)
    assert top.tolist() == [[5, 4], [2, 3]]


def test_the_config_hash_follows_the_model_not_the_paths(tmp_path: Path) -> None:
    from tests.helpers.hydra import compose_config

    from recsys.training.config import config_hash

    def hashed(root: Path, *overrides: str) -> str:
        return config_hash(
            compose_config("retrain", root, ["experiment=synthetic_fast", *overrides])
        )

    same = hashed(tmp_path / "a")
    assert hashed(tmp_path / "b", "promote_if_gated=true", "holdout.n=1") == same
    assert hashed(tmp_path / "a", "model.task.temperature=0.5") != same
    assert hashed(tmp_path / "a", "ranker.enabled=false") != same
