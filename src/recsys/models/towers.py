"""The two towers. Inputs are encoded tensors from `recsys.features.pipeline`; outputs are
L2-normalised vectors, so scores are cosine similarities (divided by a temperature)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from recsys.models.layers import AttentionPooling, mlp


class BookTower(nn.Module):
    """Book id embedding plus side features (author, publisher, year bucket, language, tags).

    Args:
        sizes: embedding-table sizes from ``FeatureState.sizes()``.
        embedding_dim: width of every embedding table.
        hidden_dims: MLP hidden widths.
        output_dim: size of the returned vectors.
        side_features: use metadata embeddings (False = id only).
        dropout: MLP dropout.
    """

    def __init__(
        self,
        sizes: Mapping[str, int],
        embedding_dim: int = 64,
        hidden_dims: Sequence[int] = (128,),
        output_dim: int = 64,
        side_features: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.side_features = side_features
        self.book = nn.Embedding(sizes["num_books"], embedding_dim, padding_idx=0)
        self.author = nn.Embedding(sizes["num_authors"], embedding_dim, padding_idx=0)
        self.publisher = nn.Embedding(sizes["num_publishers"], embedding_dim, padding_idx=0)
        self.year = nn.Embedding(sizes["num_year_buckets"], embedding_dim, padding_idx=0)
        self.language = nn.Embedding(sizes["num_languages"], embedding_dim, padding_idx=0)
        self.tags = nn.Embedding(sizes["num_tags"], embedding_dim, padding_idx=0)
        if not side_features:  # kept for the bundle's names, frozen for DDP (see UserTower)
            for part in (self.author, self.publisher, self.year, self.language, self.tags):
                part.requires_grad_(False)
        width = embedding_dim * (6 if side_features else 1)
        self.mlp = mlp(width, hidden_dims, output_dim, dropout)
        for table in (self.book, self.author, self.publisher, self.year, self.language, self.tags):
            nn.init.normal_(table.weight, std=0.05)

    def forward(
        self,
        book: torch.Tensor,
        author: torch.Tensor,
        publisher: torch.Tensor,
        year: torch.Tensor,
        language: torch.Tensor,
        tags: torch.Tensor,
    ) -> torch.Tensor:
        parts = [self.book(book)]  # (B, E)
        if self.side_features:
            parts += [
                self.author(author),
                self.publisher(publisher),
                self.year(year),
                self.language(language),
                # mean over the book's tags, padding (0) left out; zeros for none. The bag
                # never materialises (B, tags, E): ~1.5 ms a training step cheaper.
                F.embedding_bag(tags, self.tags.weight, mode="mean", padding_idx=0),
            ]
        return F.normalize(self.mlp(torch.cat(parts, dim=1)), dim=1)  # (B, D)


class UserTower(nn.Module):
    """Pools the user's history books (mean and/or attention), plus optional user-id and side
    features (age bucket, country). Works for users unseen in training from history alone.

    Args:
        sizes: embedding-table sizes from ``FeatureState.sizes()``.
        embedding_dim: width of every embedding table.
        hidden_dims: MLP hidden widths.
        output_dim: size of the returned vectors (must equal the book tower's).
        pooling: ``"mean"``, ``"attention"`` or ``"mean+attention"``.
        user_id: add a user-id embedding (unknown users use the OOV row).
        side_features: add age-bucket and country embeddings.
        dropout: MLP dropout.
    """

    def __init__(
        self,
        sizes: Mapping[str, int],
        embedding_dim: int = 64,
        hidden_dims: Sequence[int] = (128,),
        output_dim: int = 64,
        pooling: str = "mean+attention",
        user_id: bool = False,
        side_features: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if pooling not in ("mean", "attention", "mean+attention"):
            raise ValueError(f"pooling must be mean, attention or mean+attention, got {pooling}")
        self.use_mean = "mean" in pooling
        self.use_attention = "attention" in pooling
        self.use_user_id = user_id
        self.side_features = side_features
        self.history = nn.Embedding(sizes["num_books"], embedding_dim, padding_idx=0)
        nn.init.normal_(self.history.weight, std=0.05)
        self.attention = AttentionPooling(embedding_dim)
        self.user = nn.Embedding(sizes["num_users"] if user_id else 1, embedding_dim)
        self.age = nn.Embedding(sizes["num_age_buckets"], embedding_dim, padding_idx=0)
        self.country = nn.Embedding(sizes["num_countries"], embedding_dim, padding_idx=0)
        # the parts this configuration never reads stay (bundles name them) but are frozen:
        # DDP (engine=ray) requires every trained parameter to reach the loss
        unused = [(self.attention, not self.use_attention), (self.user, not user_id)]
        unused += [(self.age, not side_features), (self.country, not side_features)]
        for part, frozen in unused:
            part.requires_grad_(not frozen)
        width = embedding_dim * (
            int(self.use_mean) + int(self.use_attention) + int(user_id) + 2 * int(side_features)
        )
        self.mlp = mlp(width, hidden_dims, output_dim, dropout)

    def forward(
        self, user: torch.Tensor, history: torch.Tensor, age: torch.Tensor, country: torch.Tensor
    ) -> torch.Tensor:
        parts: list[torch.Tensor] = []
        if self.use_mean:
            # embedding_bag skips padding without materialising (B, L, E): much cheaper.
            parts.append(F.embedding_bag(history, self.history.weight, mode="mean", padding_idx=0))
        if self.use_attention:
            parts.append(self.attention(self.history(history), history > 0))
        if self.use_user_id:
            parts.append(self.user(user))
        if self.side_features:
            parts += [self.age(age), self.country(country)]
        return F.normalize(self.mlp(torch.cat(parts, dim=1)), dim=1)  # (B, D)
