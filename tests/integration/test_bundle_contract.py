"""The recommender contract (tests/helpers/contract.py) on the parts of a trained bundle, as
loaded from disk and served: the two-tower through its FAISS index and exactly, the two-stage
pipeline with its trained ranker, and the popularity fallback, co-occurrence and MF sources."""

from __future__ import annotations

from typing import Any

import pytest
from tests.helpers.contract import RecommenderContract

from recsys.bundle.reader import Bundle, load_bundle
from recsys.data.prepared import PreparedData
from recsys.inference.cooccurrence import CooccurrenceRecommender
from recsys.inference.mf import MatrixFactorisation
from recsys.inference.popularity import PopularityRecommender
from recsys.inference.two_stage import TwoStageRecommender
from recsys.inference.two_tower import TwoTowerRecommender
from recsys.types import Recommender

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def bundle(trained_bundle: dict[str, Any]) -> Bundle:
    return load_bundle(trained_bundle["bundle"])


class BundleContract(RecommenderContract):
    """The history is the bundle's own training data."""

    @pytest.fixture
    def data(self, trained_bundle: dict[str, Any]) -> PreparedData:
        return trained_bundle["data"]


class TestBundleTwoTowerIndexedContract(BundleContract):
    implementation = TwoTowerRecommender

    @pytest.fixture
    def model(self, bundle: Bundle) -> Recommender:
        assert bundle.index is not None
        return bundle.recommender()


class TestBundleTwoTowerExactContract(BundleContract):
    implementation = TwoTowerRecommender

    @pytest.fixture
    def model(self, bundle: Bundle) -> Recommender:
        return bundle.recommender(use_index=False)


class TestBundleTwoStageContract(BundleContract):
    implementation = TwoStageRecommender

    @pytest.fixture(scope="class")
    def model(self, bundle: Bundle) -> Recommender:
        return bundle.two_stage()


class TestBundlePopularityContract(BundleContract):
    implementation = PopularityRecommender

    @pytest.fixture
    def model(self, bundle: Bundle) -> Recommender:
        return bundle.popularity


class TestBundleCooccurrenceContract(BundleContract):
    implementation = CooccurrenceRecommender

    @pytest.fixture
    def model(self, bundle: Bundle) -> Recommender:
        return bundle.cooccurrence


class TestBundleMatrixFactorisationContract(BundleContract):
    implementation = MatrixFactorisation

    @pytest.fixture
    def model(self, bundle: Bundle) -> Recommender:
        assert bundle.mf is not None
        return bundle.mf
