from __future__ import annotations

import importlib.util

import numpy as np
import polars as pl
import pytest

from recsys.data.io import Dataset
from recsys.data.prepared import PreparedData
from recsys.data.synthetic import generate
from recsys.evaluation import EvalSet, evaluate
from recsys.inference.popularity import PopularityRecommender


def _genre_share(data: Dataset) -> float:
    genre = data.books.select("book_id", pl.col("tags").list.first().alias("genre"))
    joined = data.interactions.join(genre, on="book_id")
    top = (
        joined.group_by("user_id", "genre")
        .len()
        .group_by("user_id")
        .agg((pl.col("len").max() / pl.col("len").sum()).alias("share"))
    )
    return float(top.get_column("share").mean())


def test_deterministic_and_schema(synthetic: Dataset) -> None:
    again = generate(n_users=600, n_books=400, n_genres=8, authors_per_genre=6, seed=1)
    assert synthetic.interactions.equals(again.interactions)
    assert synthetic.duplicates == 0
    assert synthetic.users.height == 600
    assert synthetic.books.height == 400
    assert synthetic.interactions.group_by("user_id").len().get_column("len").min() >= 5


def test_taste_clusters_are_planted(synthetic: Dataset) -> None:
    # ~80% of reading comes from the primary genre; random reading would give ~1/8 + noise.
    assert _genre_share(synthetic) > 0.6


def test_power_law_popularity(synthetic: Dataset) -> None:
    counts = np.sort(synthetic.interactions.group_by("book_id").len().get_column("len").to_numpy())[
        ::-1
    ]
    top_decile = counts[: len(counts) // 10].sum() / counts.sum()
    assert top_decile > 0.3


def test_series_are_read_in_order(synthetic: Dataset) -> None:
    vols = synthetic.books.filter(pl.col("title").str.contains("#")).select(
        "book_id",
        "authors",
        pl.col("title").str.extract(r"^(.*) #").alias("series"),
        pl.col("title").str.extract(r"#(\d+)$").cast(pl.Int64).alias("vol"),
    )
    assert vols.height > 0
    assert (
        vols.group_by("series").agg(pl.col("authors").n_unique()).get_column("authors").max() == 1
    )
    reads = synthetic.interactions.join(vols, on="book_id")
    later = reads.filter(pl.col("vol") > 1).select("user_id", "series", prev=pl.col("vol") - 1)
    had_prev = later.join(
        reads.select("user_id", "series", prev="vol"), on=["user_id", "series", "prev"], how="semi"
    )
    # readers of volume k+1 usually read volume k (planted follow-up reads)
    assert had_prev.height / later.height > 0.4


def test_timestamps_increase_per_user(synthetic: Dataset) -> None:
    spans = synthetic.interactions.group_by("user_id").agg(
        (pl.col("timestamp").max() - pl.col("timestamp").min()).alias("span")
    )
    assert spans.get_column("span").min() > 0


@pytest.mark.skipif(not importlib.util.find_spec("implicit"), reason="needs the bench extra")
def test_structure_is_learnable(prepared: PreparedData) -> None:
    from recsys.baselines.als import ALSRecommender

    eval_set = EvalSet.from_prepared(prepared)
    pop = evaluate(PopularityRecommender.from_prepared(prepared), eval_set, ks=(20,))
    als = evaluate(
        ALSRecommender.from_prepared(prepared, factors=32, alpha=10.0, iterations=10),
        eval_set,
        ks=(20,),
    )
    assert als["recall@20"] > 1.5 * pop["recall@20"]
