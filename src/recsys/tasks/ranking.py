"""Ranking losses over candidate lists (padding masked)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

MASKED = -1e9


def listwise_softmax_loss(
    scores: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Cross-entropy between softmax(scores) and the normalised labels, per list.

    Args:
        scores: ``[B, K]``; labels: ``[B, K]`` (1 = held-out positive);
        mask: ``[B, K]`` valid slots.
        Lists without a positive are skipped.
    """
    scores = scores.masked_fill(~mask, MASKED)
    labels = labels * mask
    has_pos = labels.sum(1) > 0
    target = labels[has_pos] / labels[has_pos].sum(1, keepdim=True)
    log_probs = F.log_softmax(scores[has_pos], dim=1)
    return -(target * log_probs).sum(1).mean()


def pairwise_logistic_loss(
    scores: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """BPR-style: mean ``-log sigmoid(s_pos - s_neg)`` over every (positive, negative) pair
    of a list."""
    diff = scores.unsqueeze(2) - scores.unsqueeze(1)  # (B, K, K): s_i - s_j
    pos = (labels > 0) & mask
    neg = (labels <= 0) & mask
    pairs = pos.unsqueeze(2) & neg.unsqueeze(1)
    if not pairs.any():
        return scores.sum() * 0.0
    return -F.logsigmoid(diff[pairs]).mean()
