from __future__ import annotations

import gzip
from pathlib import Path

import polars as pl
import pytest

from recsys.data import io
from recsys.data.schema import BOOKS_SCHEMA, INTERACTIONS_SCHEMA
from recsys.errors import DataError


def test_build_dataset_merges_and_counts_duplicates() -> None:
    raw = pl.DataFrame(
        {
            "user_id": ["a", "a", "b"],
            "book_id": ["x", "x", "y"],
            "weight": [1.0, 2.0, 1.0],
            "timestamp": [5, 9, 1],
        }
    )
    data = io.build_dataset("t", raw)
    assert data.duplicates == 1
    row = data.interactions.filter(user_id="a").to_dicts()[0]
    assert row["weight"] == 3.0
    assert row["timestamp"] == 9
    assert dict(data.interactions.schema) == INTERACTIONS_SCHEMA


def test_missing_column_message_names_column_and_fix() -> None:
    with pytest.raises(DataError, match=r"events.csv: missing column\(s\) \['book_id'\].*mapping"):
        io.build_dataset("t", pl.DataFrame({"user_id": ["a"]}), source="events.csv")


def test_uncastable_column_is_a_clear_error() -> None:
    raw = pl.DataFrame({"user_id": ["a"], "book_id": ["x"], "timestamp": ["yesterday"]})
    with pytest.raises(DataError, match=r"column 'timestamp'.*cannot be read as Int64"):
        io.build_dataset("t", raw, source="f.csv")


def test_empty_interactions_rejected() -> None:
    raw = pl.DataFrame(
        {"user_id": [], "book_id": []}, schema={"user_id": pl.String, "book_id": pl.String}
    )
    with pytest.raises(DataError, match="no rows"):
        io.build_dataset("t", raw, source="f.csv")


def test_null_ids_rejected() -> None:
    raw = pl.DataFrame({"user_id": ["a", None], "book_id": ["x", "y"]})
    with pytest.raises(DataError, match="empty user_id or book_id"):
        io.build_dataset("t", raw)


@pytest.mark.parametrize("gz", [False, True])
def test_read_amazon_book_kgat_layout(tmp_path: Path, gz: bool) -> None:
    files = {
        "train.txt": "0 0 1 2\n1 2 3\n\n2 1\n",
        "item_list.txt": (
            "org_id remap_id freebase_id\n0553092626 0 m.a\nB1 1 m.b\nC 2 m.c\nD 3 m.d\n"
        ),
    }
    for name, text in files.items():
        if gz:
            with gzip.open(tmp_path / f"{name}.gz", "wt") as handle:
                handle.write(text)
        else:
            (tmp_path / name).write_text(text)
    data = io.read_amazon_book(tmp_path)
    assert data.interactions.height == 6
    assert data.interactions.filter(user_id="0").get_column("order").to_list() == [0, 1, 2]
    assert data.books.filter(book_id="0").item(0, "isbn") == "0553092626"
    assert data.books.height == 4


def test_read_amazon_book_rejects_other_layouts(tmp_path: Path) -> None:
    (tmp_path / "train.txt").write_text("user,item\n1,2\n")
    with pytest.raises(DataError, match="KGAT layout"):
        io.read_amazon_book(tmp_path)


def test_missing_folder_names_fix(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"does not exist.*data.reader.path"):
        io.read_amazon_book(tmp_path / "nope")


def _latin1(path: Path, text: str) -> None:
    path.write_bytes(text.encode("latin-1"))


def test_read_book_crossing(tmp_path: Path) -> None:
    _latin1(tmp_path / "book_history.dat", "user\titem\taccessed\n1\t10\t1\n1\t11\t1\n2\t10\t1\n")
    _latin1(tmp_path / "book_ratings.dat", "user\titem\trating\n1\t10\t7.000000\n")
    url = "http://x/{}.jpg"
    _latin1(
        tmp_path / "items_info.dat",
        "Book_ID\tISBN\tBook-Title\tBook-Author\tYear-Of-Publication\tPublisher\tS\tM\tL\n"
        "10\t0393045218\tCaf\xe9 Stories\tAnn\t1999\tW. W. Norton &amp\t Company\t"
        f"{url}\t{url}\t{url}\t\n"
        f"11\t0000000001\tOther\tBob\t0\tPub\t{url}\t{url}\t{url}\t\n",
    )
    _latin1(
        tmp_path / "users_info.dat",
        "User-ID\tLocation\tAge\n1\tmadrid, spain\t31\t\n2\tparis, france\tNULL\t\n",
    )
    data = io.read_book_crossing(tmp_path)
    assert data.interactions.height == 3
    rated = data.interactions.filter(user_id="1", book_id="10").to_dicts()[0]
    assert rated["rating"] == 7.0
    assert rated["weight"] == 1.0
    book = data.books.filter(book_id="10").to_dicts()[0]
    assert book["title"] == "Café Stories"
    assert book["publisher"] == "W. W. Norton & Company"
    assert book["year"] == 1999
    assert data.books.filter(book_id="11").item(0, "year") is None
    users = {r["user_id"]: r for r in data.users.to_dicts()}
    assert users["1"]["country"] == "spain"
    assert users["1"]["age"] == 31
    assert users["2"]["age"] is None


def _goodbooks(tmp_path: Path, with_ratings: bool = True) -> None:
    (tmp_path / "books.csv").write_text(
        "book_id,goodreads_book_id,authors,original_publication_year,title,language_code,"
        "image_url,isbn\n"
        '1,100,"A. Author, B. Other",2008.0,First,eng,http://img/1.jpg,439023483\n'
        "2,200,C. Writer,,Second,spa,http://img/2.jpg,\n"
    )
    (tmp_path / "tags.csv").write_text("tag_id,tag_name\n0,fantasy\n1,to-read\n2,young\n")
    (tmp_path / "book_tags.csv").write_text(
        "goodreads_book_id,tag_id,count\n100,0,5\n100,1,50\n100,2,1\n200,2,3\n"
    )
    if with_ratings:
        (tmp_path / "ratings.csv").write_text("user_id,book_id,rating\n1,1,5\n1,2,3\n2,1,4\n")
        (tmp_path / "to_read.csv").write_text("user_id,book_id\n2,2\n")


def test_read_goodbooks_full_release(tmp_path: Path) -> None:
    _goodbooks(tmp_path)
    data = io.read_goodbooks(tmp_path, include_to_read=True, max_tags=2)
    assert data.interactions.height == 4
    shelved = data.interactions.filter(user_id="2", book_id="2").to_dicts()[0]
    assert shelved["weight"] == 0.5
    assert shelved["rating"] is None
    first = data.books.filter(book_id="1").to_dicts()[0]
    assert first["isbn"] == "0439023483"
    assert first["tags"] == ["to-read", "fantasy"]
    assert first["year"] == 2008
    assert data.books.filter(book_id="2").item(0, "year") is None
    assert dict(data.books.schema) == BOOKS_SCHEMA


def test_read_goodbooks_metadata_only_explains(tmp_path: Path) -> None:
    _goodbooks(tmp_path, with_ratings=False)
    with pytest.raises(DataError, match=r"ratings.csv not found.*recsys download"):
        io.read_goodbooks(tmp_path)


def test_amazon_books_take_metadata_by_isbn(tmp_path: Path) -> None:
    """Amazon-Book's books get title, authors, tags... from catalogues sharing their ISBN;
    the first catalogue that knows a field wins, the others fill what it lacks."""
    amazon, goodbooks, crossing = (tmp_path / n for n in ("amazon", "goodbooks", "crossing"))
    for folder in (amazon, goodbooks, crossing):
        folder.mkdir()
    (amazon / "train.txt").write_text("0 0 1 2\n1 2 3\n")
    (amazon / "item_list.txt").write_text(
        "org_id remap_id freebase_id\n0439023483 0 m.a\n0393045218 1 m.b\nB00X 2 m.c\nD 3 m.d\n"
    )
    _goodbooks(goodbooks, with_ratings=False)  # its book 1 is ISBN 439023483 (zero lost)
    url = "http://x/{}.jpg"
    _latin1(
        crossing / "items_info.dat",
        "Book_ID\tISBN\tBook-Title\tBook-Author\tYear-Of-Publication\tPublisher\tS\tM\tL\n"
        f"10\t0439023483\tOther Title\tSomeone\t2010\tScholastic\t{url}\t{url}\t{url}\t\n"
        f"11\t0393045218\tCaf\xe9 Stories\tAnn\t1999\tNorton\t{url}\t{url}\t{url}\t\n",
    )
    data = io.read_amazon_book(amazon, metadata=[goodbooks, crossing])
    books = {r["book_id"]: r for r in data.books.to_dicts()}
    assert books["0"]["title"] == "First"  # Goodbooks first
    assert books["0"]["authors"] == "A. Author, B. Other"
    assert books["0"]["year"] == 2008
    assert books["0"]["tags"] == ["to-read", "fantasy", "young"]
    assert books["0"]["publisher"] == "Scholastic"  # Goodbooks has none: Book-Crossing's
    assert books["1"]["title"] == "Café Stories"
    assert books["1"]["publisher"] == "Norton"
    assert books["2"]["title"] is None  # no match: unchanged
    assert books["2"]["isbn"] == "B00X"
    assert data.books.height == 4
    assert dict(data.books.schema) == BOOKS_SCHEMA
    assert io.read_amazon_book(amazon).books.get_column("title").null_count() == 4


def test_metadata_folder_without_a_catalogue_names_the_fix(tmp_path: Path) -> None:
    (tmp_path / "train.txt").write_text("0 0 1\n")
    (tmp_path / "item_list.txt").write_text("org_id remap_id freebase_id\nA 0 m.a\nB 1 m.b\n")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no books.csv.*data.metadata"):
        io.read_amazon_book(tmp_path, metadata=[tmp_path / "empty"])


def test_read_custom_with_column_mapping(tmp_path: Path) -> None:
    pl.DataFrame({"customer": [1, 1, 2], "sku": ["x", "y", "x"], "ts": [3, 4, 5]}).write_parquet(
        tmp_path / "events.parquet"
    )
    (tmp_path / "catalog.csv").write_text("sku,name,yr\nx,X Book,2001\ny,Y Book,\n")
    data = io.read_custom(
        tmp_path / "events.parquet",
        books=tmp_path / "catalog.csv",
        interaction_columns={"user_id": "customer", "book_id": "sku", "timestamp": "ts"},
        book_columns={"book_id": "sku", "title": "name", "year": "yr"},
    )
    assert data.interactions.get_column("user_id").to_list() == ["1", "1", "2"]
    assert data.interactions.get_column("timestamp").to_list() == [3, 4, 5]
    assert data.books.filter(book_id="x").item(0, "year") == 2001
    assert data.books.filter(book_id="y").item(0, "tags").to_list() == []


def test_read_custom_mapping_error(tmp_path: Path) -> None:
    (tmp_path / "e.csv").write_text("u,b\n1,2\n")
    with pytest.raises(DataError, match=r"\['customer'\].*not in the file"):
        io.read_custom(tmp_path / "e.csv", interaction_columns={"user_id": "customer"})
    (tmp_path / "e.json").write_text("{}")
    with pytest.raises(DataError, match="unsupported format"):
        io.read_custom(tmp_path / "e.json")


@pytest.mark.realdata
def test_real_amazon_book_counts(shared_data: Path) -> None:
    data = io.read_amazon_book(shared_data / "amazon-book")
    assert data.interactions.height == 652_514
    assert data.interactions.get_column("user_id").n_unique() == 70_679
    assert data.interactions.get_column("book_id").n_unique() == 24_915
    assert data.duplicates == 0


@pytest.mark.realdata
def test_real_amazon_book_metadata_by_isbn(shared_data: Path) -> None:
    """About one Amazon-Book in eight is in Goodbooks-10k or Book-Crossing by ISBN."""
    data = io.read_amazon_book(
        shared_data / "amazon-book",
        metadata=[shared_data / "goodbooks-10k", shared_data / "book-crossing"],
    )
    assert data.books.height == 24_915
    assert data.books.get_column("authors").drop_nulls().len() == 3_011
    assert data.interactions.height == 652_514
