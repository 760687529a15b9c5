"""Ranking features for (user, candidate) pairs: part of the one feature pipeline.

Every consumer (ranker training, offline evaluation, serving, batch scoring) computes pair
features with :func:`pair_features`, from the same inputs: the candidate lists with their
per-source scores, the user's encoded history and the encoded book table.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from recsys.features.pipeline import BookFeatures

FEATURES = (
    "retrieval_score",
    "retrieval_rank",
    "from_retrieval",
    "cooc_score",
    "cooc_rank",
    "from_cooc",
    "log_popularity",
    "log_history_length",
    "author_match",
    "publisher_match",
    "year_distance",
    "year_known",
    "tag_overlap",
    "retrieval_score_gap",
    "cooc_score_share",
    "mf_score",
    "mf_rank",
    "from_mf",
    "mf_score_gap",
    "ease_score",
    "ease_rank",
    "from_ease",
    "ease_score_share",
)


@dataclass
class Candidates:
    """Candidate lists for a batch of users (``-1`` pads), with what each source said.

    Attributes:
        books: ``[B, K]`` book indices.
        retrieval_score: ``[B, K]`` two-tower score (computed for every candidate).
        retrieval_rank: ``[B, K]`` rank in the two-tower list (list length if absent).
        from_retrieval: ``[B, K]`` bool.
        cooc_score: ``[B, K]`` co-occurrence score against the history (every candidate).
        cooc_rank: ``[B, K]`` rank in the co-occurrence list (list length if absent).
        from_cooc: ``[B, K]`` bool.
        mf_score: ``[B, K]`` matrix-factorisation score (every candidate; 0 without MF).
        mf_rank: ``[B, K]`` rank in the MF list (list length if absent).
        from_mf: ``[B, K]`` bool.
        ease_score: ``[B, K]`` EASE score against the history (every candidate; 0 without
            EASE).
        ease_rank: ``[B, K]`` rank in the EASE list (list length if absent).
        from_ease: ``[B, K]`` bool.
    """

    books: np.ndarray
    retrieval_score: np.ndarray
    retrieval_rank: np.ndarray
    from_retrieval: np.ndarray
    cooc_score: np.ndarray
    cooc_rank: np.ndarray
    from_cooc: np.ndarray
    mf_score: np.ndarray
    mf_rank: np.ndarray
    from_mf: np.ndarray
    ease_score: np.ndarray
    ease_rank: np.ndarray
    from_ease: np.ndarray

    @property
    def mask(self) -> np.ndarray:
        return self.books >= 0


def _match_share(cand: torch.Tensor, hist: torch.Tensor, hist_len: torch.Tensor) -> torch.Tensor:
    """Share of history books whose attribute equals the candidate's (unknown never matches).

    Counted by sorted lookup of (row, attribute) keys, not a ``[B, K, L]`` comparison.
    """
    if cand.numel() == 0:
        return torch.zeros(cand.shape)
    rows = torch.arange(cand.shape[0]).unsqueeze(1)
    width = int(max(int(cand.max()), int(hist.max()) if hist.numel() else 0)) + 1
    keys = (rows * width + hist)[hist > 1].sort().values
    query = rows * width + cand
    counts = torch.searchsorted(keys, query, right=True) - torch.searchsorted(keys, query)
    counts = counts.masked_fill(cand <= 1, 0)
    return counts.float() / hist_len.clamp(min=1).unsqueeze(1)


def _tag_overlap(cand_tags: torch.Tensor, hist_tags: torch.Tensor, num_tags: int) -> torch.Tensor:
    """Jaccard between a candidate's tags and the union of the history's tags, ``[B, K]``."""
    batch, k, width = cand_tags.shape
    present = torch.zeros(batch, num_tags, dtype=torch.bool)
    present.scatter_(1, hist_tags.reshape(batch, -1), True)
    present[:, :2] = False
    flat = cand_tags.reshape(batch, k * width)
    inter = present.gather(1, flat).reshape(batch, k, width).sum(2).float()
    cand_n = (cand_tags > 1).sum(2).float()
    union = cand_n + present.sum(1, keepdim=True).float() - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))


def pair_features(
    cands: Candidates,
    history: torch.Tensor,
    books: BookFeatures,
    log_popularity: torch.Tensor,
    num_tags: int,
) -> torch.Tensor:
    """Dense features ``[B, K, len(FEATURES)]`` (padding rows are zeros).

    Args:
        cands: candidate lists and per-source scores.
        history: encoded histories ``[B, L]`` (0 = padding).
        books: encoded book table (row = book index).
        log_popularity: ``log1p`` training count per book index.
        num_tags: tag vocabulary size.
    """
    idx = torch.from_numpy(np.maximum(cands.books, 0))
    mask = torch.from_numpy(cands.mask)
    retrieval = torch.from_numpy(cands.retrieval_score).float()
    cooc = torch.from_numpy(cands.cooc_score).float()
    # List-relative scores: the retriever serving a list is trained on more data than the one
    # that produced the ranker's training lists, so absolute scores drift; gaps and shares less.
    top_retrieval = retrieval.masked_fill(~mask, -torch.inf).amax(1, keepdim=True)
    top_cooc = cooc.masked_fill(~mask, 0.0).amax(1, keepdim=True)
    mf = torch.from_numpy(cands.mf_score).float()
    top_mf = mf.masked_fill(~mask, -torch.inf).amax(1, keepdim=True)
    ease = torch.from_numpy(cands.ease_score).float()
    top_ease = ease.masked_fill(~mask, 0.0).amax(1, keepdim=True)
    hist_len = (history > 0).sum(1)
    years_h = books["year"][history].float()
    known_h = (years_h > 0).float()
    mean_year = (years_h * known_h).sum(1) / known_h.sum(1).clamp(min=1)
    year_c = books["year"][idx].float()
    year_known = (year_c > 0) & (known_h.sum(1, keepdim=True) > 0)
    columns = [
        retrieval,
        torch.log1p(torch.from_numpy(cands.retrieval_rank).float()),
        torch.from_numpy(cands.from_retrieval).float(),
        cooc,
        torch.log1p(torch.from_numpy(cands.cooc_rank).float()),
        torch.from_numpy(cands.from_cooc).float(),
        log_popularity[idx],
        torch.log1p(hist_len.float()).unsqueeze(1).expand_as(year_c),
        _match_share(books["author"][idx], books["author"][history], hist_len),
        _match_share(books["publisher"][idx], books["publisher"][history], hist_len),
        torch.where(year_known, (year_c - mean_year.unsqueeze(1)).abs(), torch.zeros_like(year_c)),
        year_known.float(),
        _tag_overlap(books["tags"][idx], books["tags"][history], num_tags),
        torch.where(mask, retrieval - top_retrieval, torch.zeros_like(retrieval)),
        torch.where(top_cooc > 0, cooc / top_cooc.clamp(min=1e-12), torch.zeros_like(cooc)),
        mf,
        torch.log1p(torch.from_numpy(cands.mf_rank).float()),
        torch.from_numpy(cands.from_mf).float(),
        torch.where(mask, mf - top_mf, torch.zeros_like(mf)),
        ease,
        torch.log1p(torch.from_numpy(cands.ease_rank).float()),
        torch.from_numpy(cands.from_ease).float(),
        torch.where(top_ease > 0, ease / top_ease.clamp(min=1e-12), torch.zeros_like(ease)),
    ]
    out = torch.stack(columns, dim=-1)
    return out * mask.unsqueeze(-1)
