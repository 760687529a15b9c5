"""Every Recommender passes the same contract (tests/helpers/contract.py): one subclass per
implementation, all built once per module on the small synthetic data, plus a check that no
implementation in src/recsys is left without one."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from tests.helpers.contract import RecommenderContract
from tests.helpers.retriever import quick_retriever

from recsys.baselines.als import ALSRecommender
from recsys.data.prepared import PreparedData
from recsys.features.pipeline import FeaturePipeline, FeatureState, book_feature_table
from recsys.features.ranking import FEATURES
from recsys.features.vocab import NUM_RESERVED
from recsys.index.faiss_index import IndexSpec, build_index
from recsys.inference.cooccurrence import CooccurrenceRecommender
from recsys.inference.ease import EaseRecommender
from recsys.inference.mf import MatrixFactorisation
from recsys.inference.popularity import PopularityRecommender
from recsys.inference.two_stage import CandidateGenerator, TwoStageRecommender
from recsys.inference.two_tower import TwoTowerRecommender
from recsys.lifecycle.compare import HoldoutRecommender
from recsys.models.ranker import Ranker
from recsys.types import Recommender

SRC = Path(__file__).resolve().parents[2] / "src" / "recsys"


@pytest.fixture(scope="module")
def state(prepared: PreparedData) -> FeatureState:
    return FeaturePipeline().fit(
        prepared.train, prepared.books, prepared.users, prepared.user_vocab, prepared.book_vocab
    )


@pytest.fixture(scope="module")
def retriever(prepared: PreparedData, state: FeatureState) -> TwoTowerRecommender:
    """Exact scoring over every book (no index)."""
    return quick_retriever(prepared, state)


@pytest.fixture(scope="module")
def indexed_retriever(retriever: TwoTowerRecommender) -> TwoTowerRecommender:
    """The same towers retrieving through a FAISS index over the real books, as served."""
    books = np.arange(NUM_RESERVED, retriever.n_books)
    index = build_index(
        retriever.book_embeddings[books], books, IndexSpec(kind="flat"), search_params={}
    )
    return TwoTowerRecommender(
        retriever.user_tower,
        retriever.book_embeddings,
        retriever.state,
        retriever.temperature,
        retriever.user_side,
        index,
    )


@pytest.fixture(scope="module")
def cooccurrence(prepared: PreparedData) -> CooccurrenceRecommender:
    return CooccurrenceRecommender.from_prepared(prepared)


@pytest.fixture(scope="module")
def mf(prepared: PreparedData) -> MatrixFactorisation:
    return MatrixFactorisation.fit(prepared.matrix("train"), factors=16, iterations=3)


def _two_stage(
    prepared: PreparedData,
    state: FeatureState,
    retriever: TwoTowerRecommender,
    cooccurrence: CooccurrenceRecommender,
    mf: MatrixFactorisation,
) -> TwoStageRecommender:
    """The pipeline with an untrained ranker: the contract is about its mechanics, whatever
    the ranker's weights (tests/integration/test_bundle_contract.py runs a trained one)."""
    generator = CandidateGenerator(
        retriever,
        cooccurrence,
        n_retrieval=30,
        n_cooc=30,
        max_candidates=90,
        mf=mf,
        n_mf=30,
        ease=EaseRecommender.from_prepared(prepared, l2=50.0, k=30),
        n_ease=30,
    )
    torch.manual_seed(0)
    ranker = Ranker(state.sizes(), num_features=len(FEATURES), embedding_dim=8, hidden_dims=[16])
    counts = np.asarray(prepared.matrix("train", binary=True).sum(0)).ravel()
    log_popularity = torch.from_numpy(np.log1p(counts)).float()
    return TwoStageRecommender(
        generator, ranker, book_feature_table(prepared.books, state), log_popularity
    )


@pytest.fixture(scope="module")
def two_stage(
    prepared: PreparedData,
    state: FeatureState,
    indexed_retriever: TwoTowerRecommender,
    cooccurrence: CooccurrenceRecommender,
    mf: MatrixFactorisation,
) -> TwoStageRecommender:
    """As bundles serve it below ``ANN_MIN_BOOKS`` books: FAISS retrieval, exact MF."""
    return _two_stage(prepared, state, indexed_retriever, cooccurrence, mf)


@pytest.fixture(scope="module")
def two_stage_approximate(
    prepared: PreparedData,
    state: FeatureState,
    indexed_retriever: TwoTowerRecommender,
    cooccurrence: CooccurrenceRecommender,
    mf: MatrixFactorisation,
) -> TwoStageRecommender:
    """As bundles serve it from ``ANN_MIN_BOOKS`` books: MF's top books through HNSW too."""
    return _two_stage(prepared, state, indexed_retriever, cooccurrence, mf.with_ann())


class TestPopularityContract(RecommenderContract):
    implementation = PopularityRecommender

    @pytest.fixture
    def model(self, prepared: PreparedData) -> Recommender:
        return PopularityRecommender.from_prepared(prepared)


class TestHoldoutContract(RecommenderContract):
    """The retrain's holdout scorer: the two-stage model by user row, popularity for rows
    with no known book."""

    implementation = HoldoutRecommender

    @pytest.fixture
    def model(self, two_stage: TwoStageRecommender, prepared: PreparedData) -> Recommender:
        users = np.arange(prepared.train.shape[0] + NUM_RESERVED)
        return HoldoutRecommender(two_stage, users, PopularityRecommender.from_prepared(prepared))


class TestALSContract(RecommenderContract):
    implementation = ALSRecommender

    @pytest.fixture(scope="class")
    def model(self, prepared: PreparedData) -> Recommender:
        return ALSRecommender.from_prepared(prepared, factors=16, iterations=3)


class TestCooccurrenceContract(RecommenderContract):
    implementation = CooccurrenceRecommender

    @pytest.fixture
    def model(self, cooccurrence: CooccurrenceRecommender) -> Recommender:
        return cooccurrence


class TestEaseContract(RecommenderContract):
    """Dense weights (the baseline)."""

    implementation = EaseRecommender

    @pytest.fixture(scope="class")
    def model(self, prepared: PreparedData) -> Recommender:
        return EaseRecommender.from_prepared(prepared, l2=50.0)


class TestEasePrunedContract(RecommenderContract):
    """Pruned weights (what a bundle serves)."""

    implementation = EaseRecommender

    @pytest.fixture(scope="class")
    def model(self, prepared: PreparedData) -> Recommender:
        return EaseRecommender.from_prepared(prepared, l2=50.0, k=20)


class TestMatrixFactorisationContract(RecommenderContract):
    implementation = MatrixFactorisation

    @pytest.fixture
    def model(self, mf: MatrixFactorisation) -> Recommender:
        return mf


class TestTwoTowerExactContract(RecommenderContract):
    implementation = TwoTowerRecommender

    @pytest.fixture
    def model(self, retriever: TwoTowerRecommender) -> Recommender:
        return retriever


class TestTwoTowerIndexedContract(RecommenderContract):
    implementation = TwoTowerRecommender

    @pytest.fixture
    def model(self, indexed_retriever: TwoTowerRecommender) -> Recommender:
        return indexed_retriever


class TestTwoStageContract(RecommenderContract):
    implementation = TwoStageRecommender

    @pytest.fixture
    def model(self, two_stage: TwoStageRecommender) -> Recommender:
        return two_stage


class TestTwoStageApproximateContract(RecommenderContract):
    implementation = TwoStageRecommender

    @pytest.fixture
    def model(self, two_stage_approximate: TwoStageRecommender) -> Recommender:
        return two_stage_approximate


def _implementations() -> set[str]:
    """Classes in src/recsys that implement the protocol: subclasses of ScoringRecommender,
    or classes defining both ``score`` and ``recommend`` (read from source, nothing imported)."""
    found = set()
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ClassDef):
                continue
            bases = {ast.unparse(base) for base in node.bases}
            methods = {n.name for n in node.body if isinstance(n, ast.FunctionDef)}
            if "ScoringRecommender" in bases or {"score", "recommend"} <= methods:
                found.add(node.name)
    return found - {"Recommender", "ScoringRecommender"}  # the protocol and the shared base


def test_every_implementation_runs_the_contract() -> None:
    implementations = _implementations()
    assert len(implementations) >= 6
    covered = {
        cls.implementation.__name__
        for name, cls in globals().items()
        if name.startswith("Test") and issubclass(cls, RecommenderContract)
    }
    assert implementations == covered


def test_features_from_matrix_keep_each_rows_largest_values_oldest_first(
    retriever: TwoTowerRecommender,
) -> None:
    """The batch's histories equal the row-by-row definition: known books only, ordered by
    value then book index, the last ``max_history`` kept right-aligned."""
    rng = np.random.default_rng(7)
    width = retriever.state.config.max_history
    n_rows, n_cols = 6, retriever.base_books + 3  # three books added after training
    lengths = [0, 1, 5, width, width + 9, 2 * width]
    rows = np.repeat(np.arange(n_rows), lengths)
    cols = np.concatenate(
        [rng.choice(np.arange(NUM_RESERVED, n_cols), n, replace=False) for n in lengths]
    )
    values = rng.integers(1, 4, cols.size).astype(np.float32)  # ties: the book index decides
    history = sp.csr_matrix((values, (rows, cols)), shape=(n_rows, n_cols))
    for i in range(n_rows):  # any stored order within a row
        part = slice(history.indptr[i], history.indptr[i + 1])
        history.indices[part], history.data[part] = (
            history.indices[part][::-1].copy(),
            history.data[part][::-1].copy(),
        )
    history.has_sorted_indices = False
    expected = np.zeros((n_rows, width), dtype=np.int64)
    for i in range(n_rows):
        books = history.indices[history.indptr[i] : history.indptr[i + 1]]
        data = history.data[history.indptr[i] : history.indptr[i + 1]]
        known = books < retriever.base_books
        kept = books[known][np.lexsort((books[known], data[known]))][-width:]
        if kept.size:
            expected[i, width - kept.size :] = kept
    got = retriever.features_from_matrix(np.arange(n_rows) + NUM_RESERVED, history)
    np.testing.assert_array_equal(got["history"].numpy(), expected)
    assert (got["history"][-1] > 0).all()
