"""Index steps: the FAISS index over a retriever's books, at training time or for a bundle."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from recsys.bundle import layout
from recsys.bundle.derive import derive
from recsys.bundle.reader import Bundle
from recsys.data.prepared import PreparedData
from recsys.features.vocab import NUM_RESERVED
from recsys.index.faiss_index import FaissIndex, IndexSpec, build_index
from recsys.training.retriever import RetrieverFit


@dataclass(frozen=True)
class IndexedBooks:
    """A retriever's book vectors and the ANN index over its real books."""

    embeddings: np.ndarray
    index: FaissIndex


def index_books(embeddings: np.ndarray, spec: IndexSpec, queries: np.ndarray) -> FaissIndex:
    """Index every real book (rows 0 and 1 of the embedding matrix are reserved).

    Args:
        embeddings: ``[num_books, dim]`` book vectors.
        spec: the index kind and its tuning target.
        queries: ``[n, dim]`` user vectors the index is tuned on.
    """
    rows = np.arange(NUM_RESERVED, embeddings.shape[0])
    return build_index(embeddings[NUM_RESERVED:], rows, spec, queries)


def eval_sample(data: PreparedData, seed: int, n: int = 2000) -> np.ndarray:
    """A seeded sample of training users (index tuning queries)."""
    users = np.unique(data.train.get_column("user_idx").to_numpy())
    users = users[users >= 2]
    return np.sort(np.random.default_rng(seed).choice(users, min(n, users.size), replace=False))


def index_retriever(
    retriever: RetrieverFit, data: PreparedData, spec: IndexSpec, seed: int
) -> IndexedBooks:
    """The index of a freshly trained retriever, tuned on a seeded sample of training users."""
    embeddings = retriever.book_embeddings()
    rec = retriever.recommender()
    sample = eval_sample(data, seed)
    queries = rec.encode(rec.features_from_matrix(sample, data.matrix("train")[sample]))
    return IndexedBooks(embeddings, index_books(embeddings, spec, queries))


def user_queries(bundle: Bundle, n: int = 2000, seed: int = 0) -> np.ndarray:
    """Vectors of a seeded sample of the bundle's known users: what the index will serve."""
    table = bundle.user_table
    known = np.flatnonzero((table["history"] > 0).any(1).numpy())
    pick = np.random.default_rng(seed).choice(known, min(n, known.size), replace=False)
    idx = torch.from_numpy(pick)
    with torch.no_grad():
        out = bundle.user_tower(
            table["user"][idx], table["history"][idx], table["age"][idx], table["country"][idx]
        )
    return np.asarray(out.numpy(), dtype=np.float32)


def rebuild_index(bundle: Bundle, spec: IndexSpec, promote: bool = True) -> Path:
    """Write a new version of ``bundle`` with an index built from ``spec``; returns its folder."""
    index = index_books(bundle.book_embeddings, spec, user_queries(bundle))
    return derive(
        bundle, {layout.INDEX: index.save}, promote=promote, index_spec=asdict(index.report)
    )
