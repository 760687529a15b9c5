"""Two-tower training: DataModule (examples from the prepared split through the one feature
pipeline) and LightningModule (towers + task + optimizer)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import lightning as L
import numpy as np
import polars as pl
import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, TensorDataset

from recsys.data.prepared import BOOK_IDX, USER_IDX, PreparedData
from recsys.features.pipeline import (
    BookFeatures,
    FeatureState,
    UserFeatures,
    book_feature_table,
    user_feature_table,
    user_histories,
)
from recsys.features.vocab import NUM_RESERVED
from recsys.lightning.batches import ShardedBatches, worker_share
from recsys.models.spectral import spectral_book_factors, spectral_init
from recsys.tasks.retrieval import RetrievalTask, log_q

MASK_LIMIT = 100_000_000  # skip same-user masking when batch x catalogue exceeds this
MAX_MARKS = 16  # a reader's latest "not for me" marks used as hard negatives


def marked_table(marks: pl.DataFrame, num_users: int, width: int = MAX_MARKS) -> torch.Tensor:
    """``[num_users, width]`` book indices each user marked "not for me" (their latest
    ``width``, 0-padded): a row's hard negatives (:class:`RetrievalTask`). ``[num_users, 0]``
    when nobody marked anything."""
    if marks.height == 0:
        return torch.zeros(num_users, 0, dtype=torch.long)
    latest = (
        marks.select(USER_IDX, BOOK_IDX)
        .group_by(USER_IDX, maintain_order=True)
        .agg(pl.col(BOOK_IDX).tail(width))
    )
    lists = latest.get_column(BOOK_IDX).to_list()
    table = torch.zeros(num_users, max(len(x) for x in lists), dtype=torch.long)
    for user, books in zip(latest.get_column(USER_IDX).to_list(), lists, strict=True):
        table[user, : len(books)] = torch.tensor(books, dtype=torch.long)
    return table


class RetrievalDataModule(L.LightningDataModule):
    """Training examples are (user, target book) pairs of the training split; the user's input
    is the rest of their training history (built in the module's step)."""

    def __init__(
        self, data: PreparedData, state: FeatureState, batch_size: int = 1024, seed: int = 0
    ) -> None:
        super().__init__()
        self.data, self.state = data, state
        self.batch_size, self.seed = batch_size, seed
        train = data.train.filter(
            (pl.col(BOOK_IDX) >= NUM_RESERVED) & (pl.col(USER_IDX) >= NUM_RESERVED)
        )
        self.users = torch.from_numpy(train.get_column(USER_IDX).to_numpy())
        self.books = torch.from_numpy(train.get_column(BOOK_IDX).to_numpy())
        self.user_table = user_feature_table(user_histories(data.train), data.users, state)
        self.book_table = book_feature_table(data.books, state)
        counts = np.bincount(self.books.numpy(), minlength=state.books.size).astype(np.float64)
        self.book_freq = torch.from_numpy(counts / max(counts.sum(), 1.0)).float()
        self.marked = marked_table(data.marks, state.users.size)

    @property
    def num_examples(self) -> int:
        return int(self.users.numel())

    def train_dataloader(self) -> DataLoader:
        dataset = TensorDataset(self.users, self.books)
        rank, world = worker_share(self)
        if world > 1:  # DDP: this worker's share of each global batch
            shard = ShardedBatches(len(dataset), self.batch_size, self.seed, rank, world)
            return DataLoader(dataset, sampler=shard, batch_size=None)
        generator = torch.Generator().manual_seed(self.seed)
        sampler = BatchSampler(
            RandomSampler(dataset, generator=generator),
            min(self.batch_size, len(dataset)),
            drop_last=True,
        )
        # Whole batches by slicing: much faster than collating single examples.
        return DataLoader(dataset, sampler=sampler, batch_size=None)


class TwoTowerModule(L.LightningModule):
    """User tower + book tower trained with the retrieval task.

    Args:
        user_tower: a ``UserTower``.
        book_tower: a ``BookTower``.
        task: a ``RetrievalTask``.
        optimizer: partial optimizer, called with the trainable parameters.
        history_dropout: drop each history item with this probability (augmentation).
        share_embeddings: tie the user tower's history-book table to the book tower's id
            table (one vector per book, learnt from both roles).
        scheduler: optional partial ``ReduceLROnPlateau`` (or any epoch scheduler) stepped on
            ``val/recall@20`` from the evaluation callback.
        init: ``"random"`` or ``"spectral"``: book tables from the training matrix's singular
            vectors (see :mod:`recsys.models.spectral`), applied by :meth:`initialise`.
        init_popularity_power: spectral init only: the matrix's columns are divided by
            ``(readers + 1) ** power`` before the decomposition.
    """

    def __init__(
        self,
        user_tower: nn.Module,
        book_tower: nn.Module,
        task: RetrievalTask,
        optimizer: Callable[..., torch.optim.Optimizer],
        history_dropout: float = 0.1,
        share_embeddings: bool = False,
        scheduler: Callable[..., Any] | None = None,
        init: str = "random",
        init_popularity_power: float = 0.5,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["user_tower", "book_tower", "task"])
        self.user_tower, self.book_tower, self.task = user_tower, book_tower, task
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.history_dropout = history_dropout
        if init not in ("random", "spectral"):
            raise ValueError(f"model.init must be random or spectral, got {init!r}")
        self.init, self.init_popularity_power = init, init_popularity_power
        if share_embeddings:
            history: Any = user_tower.history
            history.weight = cast(nn.Embedding, book_tower.book).weight
        self.user_table: UserFeatures | None = None
        self.book_table: BookFeatures | None = None
        self.book_freq: torch.Tensor | None = None
        self.feature_state: FeatureState | None = None
        self.marked: torch.Tensor | None = None  # [users, M] hard negatives (marked books)
        self._seen: torch.Tensor | None = None  # scratch mask of _accidental_hits

    def attach(self, datamodule: RetrievalDataModule) -> None:
        """Give the module the encoded feature tables (data, not parameters)."""
        self.user_table, self.book_table = datamodule.user_table, datamodule.book_table
        self.book_freq, self.feature_state = datamodule.book_freq, datamodule.state
        self.marked = datamodule.marked

    def initialise(self, datamodule: RetrievalDataModule) -> None:
        """Apply the configured initialisation from the training split (before fitting; a
        module loaded from a checkpoint or bundle is never re-initialised)."""
        if self.init != "spectral":
            return
        book_table = cast(nn.Embedding, self.book_tower.book)
        factors = spectral_book_factors(
            datamodule.data.matrix("train", binary=True),
            dim=book_table.embedding_dim,
            popularity_power=self.init_popularity_power,
            seed=datamodule.seed,
        )
        spectral_init(self.user_tower, self.book_tower, factors)

    def encode_books(self, ids: torch.Tensor) -> torch.Tensor:
        assert self.book_table is not None, "call attach() first"
        table = self.book_table
        return self.book_tower(
            table["book"][ids],
            table["author"][ids],
            table["publisher"][ids],
            table["year"][ids],
            table["language"][ids],
            table["tags"][ids],
        )

    def encode_users(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        assert self.user_table is not None, "call attach() first"
        return self.user_tower(
            users, history, self.user_table["age"][users], self.user_table["country"][users]
        )

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        assert self.user_table is not None, "call attach() first"
        assert self.book_freq is not None, "call attach() first"
        users, targets = batch
        full_history = self.user_table["history"][users]  # (B, L)
        history = full_history.masked_fill(full_history == targets.unsqueeze(1), 0)
        if self.history_dropout > 0:
            drop = torch.rand(history.shape, device=history.device) < self.history_dropout
            history = history.masked_fill(drop, 0)
        query = self.encode_users(users, history)  # (B, D)
        num_books = self.book_freq.numel()
        uniform = torch.randint(NUM_RESERVED, num_books, (self.task.num_uniform_negatives,))
        ids = torch.cat([targets, uniform])  # (C,)
        candidates = self.encode_books(ids)  # (C, D)
        lq = log_q(self.book_freq[ids], users.numel(), uniform.numel(), num_books - NUM_RESERVED)
        extra = self._accidental_hits(full_history, ids, num_books)
        loss = self.task(query, candidates, ids, lq, extra, *self._marked_negatives(users))
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True)
        return loss

    def _marked_negatives(
        self, users: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor] | tuple[()]:
        """The rows' marked books as ``([B, M, D] vectors, [B, M] valid)``; empty when no
        row's user marked anything."""
        if self.marked is None or self.marked.shape[1] == 0:
            return ()
        marked = self.marked[users]  # (B, M)
        valid = marked > 0
        if not bool(valid.any()):
            return ()
        vectors = self.encode_books(marked.flatten()).view(*marked.shape, -1)
        return vectors, valid

    def _accidental_hits(
        self, history: torch.Tensor, ids: torch.Tensor, num_books: int
    ) -> torch.Tensor | None:
        """``[B, C]`` true where candidate ``ids[j]`` is in row ``i``'s training history.

        A ``[B, books]`` scratch mask is kept between steps and cleared by scattering the
        same rows back (cheaper than allocating and zeroing it every step). None when
        ``B x books`` exceeds ``MASK_LIMIT`` (masking skipped).
        """
        batch = history.shape[0]
        if batch * num_books > MASK_LIMIT:
            return None
        seen = self._seen
        if seen is None or seen.shape != (batch, num_books):
            seen = self._seen = torch.zeros(batch, num_books, dtype=torch.bool)
        seen.scatter_(1, history, True)
        seen[:, 0] = False  # padding
        hits = seen.gather(1, ids.unsqueeze(0).expand(batch, -1))
        seen.scatter_(1, history, False)
        return hits

    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params=params)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {
                "scheduler": scheduler,
                "monitor": "val/recall@20",
                "interval": "epoch",
                "strict": False,
            },
        }

    @torch.no_grad()
    def book_embeddings(self, batch_size: int = 8192) -> torch.Tensor:
        """Vectors of every book index ``[n_books, D]`` (rows 0, 1 are zero)."""
        assert self.book_table is not None
        n = self.book_table["book"].numel()
        out = torch.cat(
            [
                self.encode_books(torch.arange(s, min(s + batch_size, n)))
                for s in range(0, n, batch_size)
            ]
        )
        out[:NUM_RESERVED] = 0
        return out
