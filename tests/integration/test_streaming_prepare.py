"""`data=custom data.buckets=K`: the interactions file streamed through buckets on disk gives
the tables the in-memory preparation gives (same rows, vocabularies, books, users, counts)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from tests.helpers.hydra import compose_config

from recsys.data.prepared import PreparedData
from recsys.data.synthetic import generate
from recsys.errors import DataError, RecsysError
from recsys.jobs.prepare import main as prepare_main
from recsys.runner import load_or_prepare

pytestmark = pytest.mark.integration

KEY = ["user_id", "book_id"]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A synthetic data set as a user's files: renamed columns, a few duplicate rows."""
    folder = tmp_path_factory.mktemp("files")
    data = generate(n_users=600, n_books=400, seed=3)
    events = data.interactions.rename({"user_id": "customer", "book_id": "sku"})
    events = pl.concat([events, events.head(50)])  # duplicates, merged on the way
    events.write_parquet(folder / "events.parquet")
    events.write_csv(folder / "events.csv")
    data.books.write_parquet(folder / "books.parquet")
    return {
        "parquet": folder / "events.parquet",
        "csv": folder / "events.csv",
        "books": folder / "books.parquet",
        "folder": folder,
    }


def prepared(files: dict[str, Path], root: Path, *extra: str) -> PreparedData:
    cfg = compose_config(
        "prepare",
        root,
        [
            "data=custom",
            f"data.reader.interactions={files['parquet']}",
            f"data.reader.books={files['books']}",
            "+data.reader.interaction_columns={user_id: customer, book_id: sku}",
            *extra,
        ],
    )
    return load_or_prepare(cfg)


def rows(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.sort(KEY)


def test_streamed_leave_last_n_equals_the_in_memory_preparation(
    files: dict[str, Path], tmp_path: Path
) -> None:
    whole = prepared(files, tmp_path / "a", "split=leave_last_n")
    streamed = prepared(files, tmp_path / "b", "split=leave_last_n", "data.buckets=4")
    assert streamed.summary["streaming"]["buckets"] == 4
    assert whole.user_vocab.ids.equals(streamed.user_vocab.ids)
    assert whole.book_vocab.ids.equals(streamed.book_vocab.ids)
    for part in ("train", "val", "test"):
        a, b = getattr(whole, part), getattr(streamed, part)
        assert a.schema == b.schema, part
        assert a.height > 0
        assert rows(a).equals(rows(b)), part
        # each user's rows together and in the same order (only users' order differs)
        ids = b.get_column("user_id")
        runs = int(ids.rle_id().max()) + 1  # type: ignore[arg-type]
        assert runs == ids.n_unique(), f"{part}: a user's rows are not together"
        for user in b.get_column("user_id").unique().head(20).to_list():
            mine = pl.col("user_id") == user
            assert a.filter(mine).equals(b.filter(mine))
    assert whole.books.equals(streamed.books)
    assert whole.users.equals(streamed.users)
    same = {"streaming", "data_fingerprint", "source_config"}
    assert {k: v for k, v in whole.summary.items() if k not in same} == {
        k: v for k, v in streamed.summary.items() if k not in same
    }
    assert streamed.summary["duplicates_merged"] == 50


def test_streamed_random_holdout_holds_out_as_many_of_each_users_rows(
    files: dict[str, Path], tmp_path: Path
) -> None:
    whole = prepared(files, tmp_path / "a")
    streamed = prepared(files, tmp_path / "b", "data.buckets=3")

    def per_user(data: PreparedData) -> pl.DataFrame:
        counts = [
            getattr(data, p).group_by("user_id").len().rename({"len": p})
            for p in ("train", "val", "test")
        ]
        out = counts[0]
        for other in counts[1:]:
            out = out.join(other, on="user_id", how="full", coalesce=True)
        return out.fill_null(0).sort("user_id")

    assert per_user(whole).equals(per_user(streamed))
    # a different draw, not the same one
    assert not rows(whole.val).select(KEY).equals(rows(streamed.val).select(KEY))


def test_streamed_csv_through_the_cli_job(files: dict[str, Path], tmp_path: Path) -> None:
    cfg = compose_config(
        "prepare",
        tmp_path,
        [
            "data=custom",
            f"data.reader.interactions={files['csv']}",
            "+data.reader.interaction_columns={user_id: customer, book_id: sku}",
            "data.buckets=2",
        ],
    )
    prepare_main(cfg)
    data = PreparedData.load(cfg.data.processed_dir)
    assert data.summary["interactions"] == data.train.height + data.val.height + data.test.height
    assert data.train.get_column("user_idx").min() >= 2


def test_what_cannot_stream_is_refused_with_the_fix(files: dict[str, Path], tmp_path: Path) -> None:
    cfg = compose_config("prepare", tmp_path, ["+data.buckets=2"])  # synthetic: in memory
    with pytest.raises(RecsysError, match=r"leave data\.buckets unset"):
        load_or_prepare(cfg)
    packed = files["folder"] / "events.csv.gz"
    packed.write_bytes(b"not really gzip")
    with pytest.raises(DataError, match="decompress it"):
        prepared({**files, "parquet": packed}, tmp_path / "gz", "data.buckets=2")


def test_erased_readers_leave_the_streamed_tables_and_their_profiles(
    files: dict[str, Path], tmp_path: Path
) -> None:
    from recsys.stores import open_store

    users = pl.DataFrame({"user_id": ["u1", "u2", "u3"], "age": [30, 40, 50]})
    users.write_parquet(tmp_path / "users.parquet")
    root = tmp_path / "root"
    cfg = compose_config("prepare", root, [])
    store = open_store(cfg.paths.store_url, create=True)
    store.users.delete_user("u2", actor="test")
    store.close()
    data = prepared(
        files, root, "data.buckets=3", f"data.reader.users={tmp_path / 'users.parquet'}"
    )
    for part in ("train", "val", "test"):
        assert "u2" not in set(getattr(data, part).get_column("user_id").to_list())
    assert sorted(data.users.get_column("user_id").to_list()) == ["u1", "u3"]
    assert data.summary["streaming"]["erased_users"] == 1
