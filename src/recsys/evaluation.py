"""Full-catalogue offline evaluation: every book is a candidate, training items are excluded."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl
import scipy.sparse as sp

from recsys.data.prepared import BOOK_IDX, PreparedData
from recsys.features.vocab import NUM_RESERVED
from recsys.metrics import ranking as M
from recsys.types import Recommender


@dataclass
class EvalSet:
    """What the evaluator needs, precomputed once per dataset.

    Attributes:
        train: user x book interactions used as model input and excluded from the lists.
        val: user x book held-out positives.
        users: user indices evaluated (known users with at least one held-out positive).
        popularity: training count per book (novelty).
        features: book x attribute matrix with normalised rows (diversity), or None.
    """

    train: sp.csr_matrix
    val: sp.csr_matrix
    users: np.ndarray
    popularity: np.ndarray
    n_train_users: int
    features: sp.csr_matrix | None = None
    skipped_cold_users: int = 0

    @classmethod
    def from_prepared(cls, data: PreparedData, part: str = "val") -> EvalSet:
        """``part="val"``: validation positives, training rows as history (what every choice
        is made on). ``part="test"``: the test carve's positives, with training and
        validation rows as history (both are known interactions when the test carve is
        asked: excluded from the lists, and input to models that read histories)."""
        if part not in ("val", "test"):
            raise ValueError(f"part must be 'val' or 'test', got {part!r}")
        fitted = data.matrix("train", binary=True)
        train = fitted if part == "val" else data.matrix("train+val", binary=True)
        val = data.matrix(part, binary=True)
        users = np.flatnonzero(np.diff(val.indptr) > 0)
        users = users[users >= NUM_RESERVED]
        held = data.val if part == "val" else data.test
        cold = held.filter(pl.col("user_idx") < NUM_RESERVED).get_column("user_id").n_unique()
        popularity = np.asarray(fitted.sum(0)).ravel()
        n_train_users = int((np.diff(fitted.indptr) > 0).sum())
        return cls(
            train,
            val,
            users,
            popularity,
            n_train_users,
            book_attribute_matrix(data.books, data.n_books),
            cold,
        )


def carves(data: PreparedData) -> dict[str, EvalSet]:
    """The evaluation set of each held-out part: ``val``, and ``test`` when the split has a
    test carve (what every report puts side by side)."""
    parts = ["val", "test"] if data.test.height else ["val"]
    return {part: EvalSet.from_prepared(data, part) for part in parts}


def book_attribute_matrix(books: pl.DataFrame, n_books: int) -> sp.csr_matrix | None:
    """Books x (authors + tags) binary matrix with L2-normalised rows; None without metadata."""
    attrs = (
        books.select(
            BOOK_IDX,
            pl.concat_list(
                pl.col("authors")
                .fill_null("")
                .str.split(",")
                .list.eval(pl.lit("a:") + pl.element().str.strip_chars()),
                pl.col("tags").list.eval(pl.lit("t:") + pl.element()),
            ).alias("attr"),
        )
        .explode("attr")
        .filter(pl.col("attr").is_not_null() & (pl.col("attr") != "a:"))
    )
    if attrs.height == 0:
        return None
    codes = attrs.get_column("attr").cast(pl.Categorical).to_physical().to_numpy()
    _, codes = np.unique(codes, return_inverse=True)
    rows = attrs.get_column(BOOK_IDX).to_numpy()
    matrix = sp.csr_matrix((np.ones(rows.size), (rows, codes)), shape=(n_books, codes.max() + 1))
    matrix.data[:] = 1.0
    norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(1)).ravel())
    return sp.csr_matrix(
        sp.diags(np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)) @ matrix
    )


def evaluate(
    model: Recommender,
    data: EvalSet,
    ks: Sequence[int] = (10, 20, 50),
    batch_size: int = 1024,
    max_users: int | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Mean Recall/NDCG/Precision/HitRate/MRR@K, coverage, novelty and diversity.

    Args:
        model: any Recommender; it receives each user's training row as history.
        data: the evaluation set.
        ks: cut-offs.
        batch_size: users scored at once (memory ~ batch_size x n_books x 4 bytes).
        max_users: evaluate a seeded random sample of users (None = all).
    """
    users = data.users
    if max_users is not None and users.size > max_users:
        users = np.sort(np.random.default_rng(seed).choice(users, max_users, replace=False))
    k_max = max(ks)
    sums: dict[str, float] = {}
    recommended: dict[int, set[int]] = {k: set() for k in ks}
    started = time.perf_counter()
    info_sum = {k: 0.0 for k in ks}
    sim_sum, sim_n = dict.fromkeys(ks, 0.0), dict.fromkeys(ks, 0)
    self_info = M.self_information(data.popularity, data.n_train_users)
    for start in range(0, users.size, batch_size):
        batch = users[start : start + batch_size]
        history = data.train[batch]
        top, _ = model.recommend(batch, history, k_max, exclude_seen=True)
        valid = top >= 0
        top = np.where(valid, top, 0)  # column 0 (padding) is never a positive
        positives = data.val[batch]
        n_pos = np.diff(positives.indptr)
        hits = M.hits_matrix(top, positives) & valid
        for k in ks:
            for name, values in (
                (f"recall@{k}", M.recall_at_k(hits, n_pos, k)),
                (f"ndcg@{k}", M.ndcg_at_k(hits, n_pos, k)),
                (f"precision@{k}", M.precision_at_k(hits, k)),
                (f"hit_rate@{k}", M.hit_rate_at_k(hits, k)),
                (f"mrr@{k}", M.mrr_at_k(hits, k)),
            ):
                sums[name] = sums.get(name, 0.0) + float(values.sum())
            recommended[k].update(np.unique(top[:, :k][valid[:, :k]]).tolist())
            shown = np.maximum(valid[:, :k].sum(1), 1)
            info_sum[k] += float(((self_info[top[:, :k]] * valid[:, :k]).sum(1) / shown).sum())
            if data.features is not None:
                sims = M.list_similarity(top[:, :k], data.features)
                sim_sum[k] += float(np.nansum(sims))
                sim_n[k] += int(np.isfinite(sims).sum())
    n = max(users.size, 1)
    result = {name: total / n for name, total in sums.items()}
    catalogue = int((data.popularity > 0).sum()) or data.train.shape[1] - NUM_RESERVED
    for k in ks:
        result[f"coverage@{k}"] = len(recommended[k]) / catalogue
        result[f"novelty@{k}"] = info_sum[k] / n
        if data.features is not None and sim_n[k]:
            result[f"diversity@{k}"] = 1.0 - sim_sum[k] / sim_n[k]
    result["users"] = float(users.size)
    result["eval_seconds"] = time.perf_counter() - started
    return result
