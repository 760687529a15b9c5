"""Small building blocks shared by the towers."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def mlp(in_dim: int, hidden: Sequence[int], out_dim: int, dropout: float = 0.0) -> nn.Sequential:
    """Linear-ReLU(-Dropout) stack ending in a plain Linear to ``out_dim``."""
    layers: list[nn.Module] = []
    dim = in_dim
    for width in hidden:
        layers += [nn.Linear(dim, width), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        dim = width
    layers.append(nn.Linear(dim, out_dim))
    return nn.Sequential(*layers)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over dim 1 of ``values`` ``[B, L, E]`` where ``mask`` ``[B, L]`` is true; 0 if none."""
    weights = mask.to(values.dtype).unsqueeze(-1)  # (B, L, 1)
    total = (values * weights).sum(1)  # (B, E)
    return total / weights.sum(1).clamp(min=1.0)


class AttentionPooling(nn.Module):
    """Attention over history items with a learned query; 0 for an empty history."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.zeros(dim))
        self.key = nn.Linear(dim, dim)

    def forward(self, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = torch.tanh(self.key(values)) @ self.query  # (B, L)
        scores = scores.masked_fill(~mask, -1e9)
        weights = torch.softmax(scores, dim=1) * mask.to(values.dtype)  # (B, L)
        weights = weights / weights.sum(1, keepdim=True).clamp(min=1e-9)
        return (weights.unsqueeze(-1) * values).sum(1)  # (B, E)
