"""Second-stage ranker: scores (user, candidate) pairs from dense features and embeddings.

The ranker owns its embeddings (a book table and a history-pooled user vector) instead of
reusing the retriever's vectors: it is trained on candidates from a retriever that never saw
the ranker's labels, and served behind a retriever trained on all data, whose vector space is
different. Retrieval is still visible to it through the retrieval score and rank features.
With ``embedding_dim=0`` it has no embeddings and scores the dense features alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from recsys.models.layers import mlp


class CrossLayer(nn.Module):
    """DCN-v2 cross layer: ``x0 * (W x + b) + x`` (explicit feature crosses)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, dim)
        nn.init.zeros_(self.linear.weight)

    def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x0 * self.linear(x) + x


class Ranker(nn.Module):
    """Per pair: standardised dense features, the user's pooled history embedding, the
    candidate's embedding and their element-wise product -> DCN-v2 crosses -> MLP -> score.

    Args:
        sizes: embedding-table sizes from ``FeatureState.sizes()`` (uses ``num_books``).
        num_features: dense features per pair.
        embedding_dim: ranker embedding width; 0 = no book-id embeddings (the dense
            features alone, which carry every source's view of the pair).
        cross_layers: number of DCN-v2 cross layers.
        hidden_dims: MLP widths after the crosses.
        dropout: MLP dropout.
    """

    def __init__(
        self,
        sizes: Mapping[str, int],
        num_features: int,
        embedding_dim: int = 32,
        cross_layers: int = 2,
        hidden_dims: Sequence[int] = (128, 64),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if embedding_dim < 0:
            raise ValueError(f"embedding_dim must be >= 0 (0: no embeddings), got {embedding_dim}")
        self.book: nn.Embedding | None = None
        if embedding_dim > 0:
            self.book = nn.Embedding(sizes["num_books"], embedding_dim, padding_idx=0)
            nn.init.normal_(self.book.weight, std=0.01)
        width = num_features + 3 * embedding_dim
        self.feature_mean: torch.Tensor
        self.feature_std: torch.Tensor
        self.register_buffer("feature_mean", torch.zeros(num_features))
        self.register_buffer("feature_std", torch.ones(num_features))
        self.crosses = nn.ModuleList([CrossLayer(width) for _ in range(cross_layers)])
        self.mlp = mlp(width, hidden_dims, 1, dropout)

    def set_standardisation(self, features: torch.Tensor, mask: torch.Tensor) -> None:
        """Fit the feature mean/std on training pairs (``features`` [N, K, F], ``mask`` [N, K])."""
        rows = features[mask]
        self.feature_mean.copy_(rows.mean(0))
        self.feature_std.copy_(rows.std(0).nan_to_num(1.0).clamp(min=1e-3))

    def forward(
        self, features: torch.Tensor, history: torch.Tensor, candidates: torch.Tensor
    ) -> torch.Tensor:
        """Scores ``[B, K]`` from ``features`` [B, K, F], ``history`` [B, L] book indices
        (0 = pad) and ``candidates`` [B, K] book indices (pads may be any valid index)."""
        dense = (features - self.feature_mean) / self.feature_std
        if self.book is None:
            x0 = dense
        else:
            user = F.embedding_bag(history, self.book.weight, mode="mean", padding_idx=0)  # (B, E)
            cand = self.book(candidates)  # (B, K, E)
            u = user.unsqueeze(1).expand_as(cand)
            x0 = torch.cat([dense, u, cand, u * cand], dim=-1)  # (B, K, W)
        x = x0
        for cross in self.crosses:
            x = cross(x0, x)
        return self.mlp(x).squeeze(-1)  # (B, K)
