"""Sampled softmax for retrieval: in-batch + mixed uniform negatives, logQ correction,
accidental-hit masking, temperature (Yi et al. 2019; Yang et al. 2020)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

MASKED = -1e9


def log_q(
    candidate_freq: torch.Tensor, batch_size: int, num_uniform: int, num_candidates: int
) -> torch.Tensor:
    """Log of each candidate's expected count in the pool: ``B * p_j + M / N``.

    ``candidate_freq`` ``[C]`` holds each candidate's share of training interactions (the
    in-batch sampling probability); uniform negatives add ``M / N`` to every book.
    """
    expected = batch_size * candidate_freq + num_uniform / max(num_candidates, 1)
    return torch.log(expected.clamp(min=1e-12))


class RetrievalTask(nn.Module):
    """Softmax over a candidate pool where row ``i``'s positive is candidate ``i``.

    Args:
        temperature: initial temperature (scores are cosine / temperature).
        learn_temperature: make the temperature a trained parameter.
        logq_correction: subtract log sampling probability from every logit.
        num_uniform_negatives: extra books sampled uniformly per batch (mixed negatives).
    """

    def __init__(
        self,
        temperature: float = 0.05,
        learn_temperature: bool = False,
        logq_correction: bool = True,
        num_uniform_negatives: int = 1024,
    ) -> None:
        super().__init__()
        self.log_temperature = nn.Parameter(
            torch.tensor(math.log(temperature)), requires_grad=learn_temperature
        )
        self.logq_correction = logq_correction
        self.num_uniform_negatives = num_uniform_negatives

    @property
    def temperature(self) -> float:
        return float(self.log_temperature.exp())

    def logits(
        self,
        query: torch.Tensor,
        candidates: torch.Tensor,
        candidate_log_q: torch.Tensor | None,
    ) -> torch.Tensor:
        """``[B, C]`` logits: ``query @ candidates.T / T`` minus ``log q`` when corrected.

        The temperature scales the ``[B, D]`` query rather than the ``[B, C]`` product, and
        the correction is the product's bias (one ``addmm``): two passes over ``[B, C]``
        fewer a step.
        """
        scaled = query / self.log_temperature.exp()
        if self.logq_correction and candidate_log_q is not None:
            return torch.addmm(-candidate_log_q.unsqueeze(0), scaled, candidates.T)
        return scaled @ candidates.T  # (B, C)

    def forward(
        self,
        query: torch.Tensor,
        candidates: torch.Tensor,
        candidate_ids: torch.Tensor,
        candidate_log_q: torch.Tensor | None = None,
        extra_mask: torch.Tensor | None = None,
        hard_negatives: torch.Tensor | None = None,
        hard_valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean cross-entropy.

        Args:
            query: user vectors ``[B, D]``.
            candidates: candidate vectors ``[C, D]``, ``C >= B``; the first ``B`` are the
                positives of the ``B`` rows, the rest are extra negatives.
            candidate_ids: book index of each candidate ``[C]``.
            candidate_log_q: log sampling probability ``[C]`` (see :func:`log_q`).
            extra_mask: bool ``[B, C]``, true where a candidate is another positive of the row's
                user (an accidental hit); masked out except on the diagonal.
            hard_negatives: ``[B, M, D]`` books row ``i``'s reader marked "not for me",
                negatives of that row only (never sampled: no log q correction);
            hard_valid: ``[B, M]`` which of them are real (padding is masked).
        """
        batch = query.shape[0]
        logits = self.logits(query, candidates, candidate_log_q)
        target_ids = candidate_ids[:batch]
        hits = candidate_ids.unsqueeze(0) == target_ids.unsqueeze(1)  # (B, C) same book
        if extra_mask is not None:
            hits |= extra_mask
        hits[:, :batch].diagonal().fill_(False)  # each row's own positive stays
        # in place: the product's backward needs its inputs, not its output
        logits.masked_fill_(hits, MASKED)
        if hard_negatives is not None and hard_valid is not None:
            scaled = query / self.log_temperature.exp()
            marked = torch.einsum("bd,bmd->bm", scaled, hard_negatives)
            logits = torch.cat([logits, marked.masked_fill(~hard_valid, MASKED)], dim=1)
        labels = torch.arange(batch, device=query.device)
        return F.cross_entropy(logits, labels)
