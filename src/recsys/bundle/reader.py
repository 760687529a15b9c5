"""Load a bundle and verify it: schema version and the sha256 of every file."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, cast

import numpy as np
import polars as pl
import scipy.sparse as sp
import torch

from recsys.bundle import layout
from recsys.bundle.files import resolve, verify
from recsys.bundle.manifest import Manifest
from recsys.data.works import Works
from recsys.drift import TrainingSummary
from recsys.errors import BundleError
from recsys.features.pipeline import (
    BookFeatures,
    FeatureState,
    UserFeatures,
    book_feature_table,
    user_feature_table,
)
from recsys.features.ranking import FEATURES
from recsys.index.faiss_index import FaissIndex
from recsys.inference.cooccurrence import CooccurrenceRecommender
from recsys.inference.ease import EaseRecommender
from recsys.inference.mf import MatrixFactorisation
from recsys.inference.popularity import PopularityRecommender
from recsys.inference.two_stage import CandidateGenerator, TwoStageRecommender
from recsys.inference.two_tower import TwoTowerRecommender
from recsys.models.ranker import Ranker
from recsys.models.towers import BookTower, UserTower

SCORE_FN = "cosine/temperature"


@dataclass
class Bundle:
    """Typed access to a verified bundle's parts (loaded lazily)."""

    path: Path
    manifest: Manifest

    @property
    def version(self) -> str:
        return self.manifest.bundle_version

    @cached_property
    def state(self) -> FeatureState:
        return FeatureState.load(self.path / layout.FEATURES)

    def _tower(self, name: str, cls: type[torch.nn.Module]) -> torch.nn.Module:
        return self._load_module(layout.TOWERS, name, cls)

    def _load_module(self, part: str, name: str, cls: type[torch.nn.Module]) -> torch.nn.Module:
        folder = self.path / part
        args: dict[str, Any] = json.loads(layout.module_args(folder, name).read_text())
        module = cls(**args)
        module.load_state_dict(torch.load(layout.module_state(folder, name), weights_only=True))
        return module.eval()

    @cached_property
    def user_tower(self) -> torch.nn.Module:
        return self._tower(layout.USER_TOWER, UserTower)

    @cached_property
    def book_tower(self) -> torch.nn.Module:
        return self._tower(layout.BOOK_TOWER, BookTower)

    @cached_property
    def book_embeddings(self) -> np.ndarray:
        array = np.load(self.path / layout.EMBEDDINGS / layout.BOOK_EMBEDDINGS, allow_pickle=False)
        if array.shape != (self.state.books.size, self.manifest.embedding_dim):
            raise BundleError(
                f"{self.path}: book embeddings have shape {array.shape}, expected "
                f"({self.state.books.size}, {self.manifest.embedding_dim})."
            )
        return array

    @cached_property
    def books(self) -> pl.DataFrame:
        return pl.read_parquet(self.path / layout.FEATURES / layout.BOOKS)

    @cached_property
    def users(self) -> pl.DataFrame:
        return pl.read_parquet(self.path / layout.FEATURES / layout.USERS)

    @cached_property
    def histories(self) -> pl.DataFrame:
        """``(user_id, history)`` of the training carve: what the models were trained on."""
        return pl.read_parquet(self.path / layout.DATA / layout.HISTORIES)

    @cached_property
    def known_histories(self) -> pl.DataFrame:
        """``(user_id, history)`` of every interaction known at training time (training and
        validation): what serving and batch scoring use and exclude. Bundles written before
        this file existed fall back to the training carve."""
        path = self.path / layout.DATA / layout.KNOWN_HISTORIES
        return pl.read_parquet(path) if path.is_file() else self.histories

    def first_readers(self, n: int) -> tuple[list[str], sp.csr_matrix]:
        """The first ``n`` readers of :attr:`known_histories` and their histories as CSR rows
        (:meth:`history_matrix`): what priming a bundle's model path runs on."""
        frame = self.known_histories.head(n)
        ids = [str(u) for u in frame.get_column("user_id").to_list()]
        histories = [[] if h is None else h.to_list() for h in frame.get_column("history")]
        return ids, self.history_matrix(histories)

    @cached_property
    def training_summary(self) -> TrainingSummary | None:
        """The inputs the bundle was trained on, summarised for drift monitoring; None for a
        bundle written before the summary existed."""
        return TrainingSummary.load(self.path / layout.SUMMARY / layout.TRAINING_SUMMARY)

    @cached_property
    def popularity(self) -> PopularityRecommender:
        return PopularityRecommender.load(self.path / layout.FALLBACK / layout.POPULARITY)

    @cached_property
    def index(self) -> FaissIndex | None:
        """The ANN index, when the bundle has one (checked against the embedding dim)."""
        if not self.manifest.index_spec:
            return None
        return FaissIndex.load(self.path / layout.INDEX, dim=self.manifest.embedding_dim)

    @cached_property
    def user_table(self) -> UserFeatures:
        return user_feature_table(self.histories, self.users, self.state)

    @property
    def has_ranker(self) -> bool:
        return layout.module_args(self.path / layout.RANKER, layout.RANKER_MODULE).is_file()

    @cached_property
    def ranker(self) -> torch.nn.Module:
        ranker = cast(Ranker, self._load_module(layout.RANKER, layout.RANKER_MODULE, Ranker))
        trained_on = ranker.feature_mean.numel()
        if trained_on != len(FEATURES):
            raise BundleError(
                f"{self.path}: its ranker was trained on {trained_on} pair features, this "
                f"recsys computes {len(FEATURES)}; retrain the ranker "
                "(python training/train_ranker.py bundle=...) or the whole bundle."
            )
        return ranker

    @cached_property
    def cooccurrence(self) -> CooccurrenceRecommender:
        return CooccurrenceRecommender.load(
            self.path / layout.COOCCURRENCE / layout.NEIGHBOURS, self.state.books.size
        )

    @cached_property
    def mf(self) -> MatrixFactorisation | None:
        """The matrix-factorisation candidate source, when the bundle has one."""
        if not (self.path / layout.MF / layout.MF_META).is_file():
            return None
        return MatrixFactorisation.load(self.path / layout.MF, self.state.books.size)

    @cached_property
    def ease(self) -> EaseRecommender | None:
        """The EASE candidate source (pruned weights), when the bundle has one."""
        if not (self.path / layout.EASE / layout.EASE_META).is_file():
            return None
        return EaseRecommender.load(self.path / layout.EASE, self.state.books.size)

    @cached_property
    def mf_approximate(self) -> MatrixFactorisation | None:
        """The MF source with an HNSW index for its top books, on catalogues large enough for
        exact scoring to cost (``ANN_MIN_BOOKS``); below that, the exact source. The index is
        the bundle's own (built at export); bundles written before that build it here."""
        if self.mf is None:
            return None
        return self.mf.served(self.path / layout.MF)

    @cached_property
    def works(self) -> Works:
        """Works and series of the bundle's books (bundles written before the catalogue had
        them: every book its own work, no series)."""
        return Works.of_vocabulary(self.state.books.ids, self.books)

    @cached_property
    def book_table(self) -> BookFeatures:
        return book_feature_table(self.books, self.state)

    def two_stage(self, use_index: bool = True) -> TwoStageRecommender:
        """retrieve (two-tower + EASE + MF + co-occurrence) -> rank: the full product.
        ``use_index``: approximate search (the FAISS index, HNSW over the MF factors) as
        served; False scores every book exactly."""
        if not self.has_ranker:
            raise BundleError(f"{self.path} has no ranker; train one (ranker.enabled=true).")
        generator = json.loads((self.path / layout.RANKER / layout.GENERATOR).read_text())
        gen = CandidateGenerator(
            self.recommender(use_index),
            self.cooccurrence,
            **generator,
            mf=self.mf_approximate if use_index else self.mf,
            ease=self.ease,
            works=self.works if self.works.has_series else None,
        )
        pop = np.asarray(self.popularity_counts, dtype=np.float64)
        return TwoStageRecommender(
            gen, self.ranker, self.book_table, torch.from_numpy(np.log1p(pop)).float()
        )

    @cached_property
    def popularity_counts(self) -> np.ndarray:
        """Training readers per book index (from the stored histories)."""
        counts = np.zeros(self.state.books.size)
        books = self.state.books.encode(self.histories.get_column("history").explode().drop_nulls())
        np.add.at(counts, books, 1)
        counts[:2] = 0
        return counts

    def history_matrix(self, histories: list[list[str]]) -> sp.csr_matrix:
        """Raw book-id histories (oldest first) as CSR rows over the book vocabulary, unknown
        ids dropped. See :func:`history_matrix`."""
        encoded = [
            self.state.books.encode(pl.Series(history, dtype=pl.String)) for history in histories
        ]
        return history_matrix(encoded, self.state.books.size)

    def recommender(self, use_index: bool = True) -> TwoTowerRecommender:
        """Two-tower recommender: retrieval through the FAISS index when the bundle has one
        and ``use_index``, exact scoring over every book otherwise."""
        side = {"age": self.user_table["age"], "country": self.user_table["country"]}
        index = self.index if use_index else None
        return TwoTowerRecommender(
            self.user_tower,
            self.book_embeddings,
            self.state,
            self.manifest.temperature,
            side,
            index,
        )


def load_bundle(path: str | Path) -> Bundle:
    """Resolve, verify and open a bundle. Raises BundleError with a fix on any problem."""
    folder = resolve(path)
    manifest = verify(folder)
    if manifest.score_fn != SCORE_FN:
        raise BundleError(f"{folder}: score_fn {manifest.score_fn!r} is not {SCORE_FN!r}.")
    return Bundle(folder, manifest)


def history_matrix(encoded: list[np.ndarray], n_books: int) -> sp.csr_matrix:
    """Histories as book indices (oldest first; indices < 2 are dropped) -> CSR rows.

    Values are recency ranks (1 = oldest; a repeated book keeps its latest position), so
    feature encoding can keep the most recent books of a long history.
    """
    cols, ranks = [], []
    indptr = np.zeros(len(encoded) + 1, dtype=np.int64)
    for row, idx in enumerate(encoded):
        idx = np.asarray(idx, dtype=np.int64)
        position = np.arange(1, idx.size + 1, dtype=np.float32)
        keep = idx >= 2
        idx, position = idx[keep], position[keep]
        # the last occurrence of each book: unique over the reversed sequence (books ascending,
        # so the rows are canonical CSR as built, with no COO conversion)
        _, last = np.unique(idx[::-1], return_index=True)
        chosen = idx.size - 1 - last
        cols.append(idx[chosen])
        ranks.append(position[chosen])
        indptr[row + 1] = indptr[row] + chosen.size
    c = np.concatenate(cols) if cols else np.zeros(0, dtype=np.int64)
    v = np.concatenate(ranks) if ranks else np.zeros(0, dtype=np.float32)
    if c.size and c.max() >= n_books:
        raise ValueError(f"book index {int(c.max())} is outside the {n_books} columns")
    index_type = np.int32 if max(n_books, c.size) < 2**31 else np.int64
    matrix = sp.csr_matrix(
        (v.astype(np.float32), c.astype(index_type), indptr.astype(index_type)),
        shape=(len(encoded), n_books),
    )
    matrix.has_sorted_indices = True
    return matrix
