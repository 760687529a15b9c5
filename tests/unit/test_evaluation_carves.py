"""The test carve's evaluation set: its positives are the test carve, and a model reads the
training and validation rows as history (both excluded from the lists)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pytest

from recsys.data.io import Dataset
from recsys.data.prepared import PreparedData, prepare
from recsys.data.split import random_holdout
from recsys.evaluation import EvalSet, carves, evaluate
from recsys.inference.popularity import PopularityRecommender


@pytest.fixture(scope="module")
def carved(synthetic: Dataset) -> PreparedData:
    return prepare(synthetic, partial(random_holdout, fraction=0.2, test_fraction=0.2, seed=0))


def test_test_carve_reads_training_and_validation_as_history(carved: PreparedData) -> None:
    val, test = EvalSet.from_prepared(carved), EvalSet.from_prepared(carved, "test")
    assert (val.train != carved.matrix("train", binary=True)).nnz == 0
    assert (test.train != carved.matrix("train+val", binary=True)).nnz == 0
    assert (test.val != carved.matrix("test", binary=True)).nnz == 0
    assert test.train.multiply(test.val).nnz == 0  # no positive is also history
    assert np.array_equal(val.popularity, test.popularity)  # what the models learned from
    assert carved.summary["test"]["interactions"] == carved.test.height > 0
    both = carves(carved)
    assert list(both) == ["val", "test"]
    assert (both["test"].val != test.val).nnz == 0


def test_history_books_never_come_back_on_the_test_carve(carved: PreparedData) -> None:
    test = EvalSet.from_prepared(carved, "test")
    model = PopularityRecommender.from_prepared(carved)
    users = test.users[:100]
    top, _ = model.recommend(users, test.train[users], 20)
    for row, user in enumerate(users):
        seen = set(test.train[user].indices.tolist())
        assert not seen & set(top[row].tolist())
    assert evaluate(model, test, ks=(20,))["users"] == test.users.size


def test_a_part_that_does_not_exist_is_refused(carved: PreparedData) -> None:
    with pytest.raises(ValueError, match="'val' or 'test'"):
        EvalSet.from_prepared(carved, "train")
    with pytest.raises(ValueError, match="unknown split part"):
        carved.matrix("train+holdout")


def test_the_test_carve_is_saved_with_the_prepared_data(
    carved: PreparedData, tmp_path: Path
) -> None:
    again = PreparedData.load(carved.save(tmp_path / "prepared"))
    assert again.test.equals(carved.test)
    assert again.dataset().interactions.height == (
        carved.train.height + carved.val.height + carved.test.height
    )


def test_without_a_test_carve_only_validation_is_reported(prepared: PreparedData) -> None:
    assert list(carves(prepared)) == ["val"]
