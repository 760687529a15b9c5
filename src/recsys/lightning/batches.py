"""Shuffled whole batches, sharded across the workers of a distributed (DDP) fit."""

from __future__ import annotations

from collections.abc import Iterator

import lightning as L
import torch
from torch.utils.data import Sampler


def worker_share(datamodule: L.LightningDataModule) -> tuple[int, int]:
    """``(rank, world size)`` of the trainer ``datamodule`` is attached to; ``(0, 1)`` when
    it is attached to none or trains in one process."""
    trainer = getattr(datamodule, "trainer", None)
    if trainer is None:
        return 0, 1
    return int(trainer.global_rank), int(trainer.world_size)


class ShardedBatches(Sampler[torch.Tensor]):
    """Index batches of one worker's share of each global batch.

    Every epoch is a permutation of the ``n`` examples (seeded by ``seed`` and the epoch, so
    every worker draws the same one) cut into global batches of ``batch_size``; worker
    ``rank`` of ``world`` takes the ``rank``-th of ``world`` equal slices of each. The
    workers together see each global batch once, so an epoch has the steps it has in one
    process and averaged gradients are those of the global batch. A last, partial global
    batch is dropped (every worker must take the same number of steps), as is the remainder
    of ``batch_size`` not divisible by ``world``.
    """

    def __init__(self, n: int, batch_size: int, seed: int = 0, rank: int = 0, world: int = 1):
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in a world of {world}")
        self.n, self.batch_size, self.seed = n, min(batch_size, n), seed
        self.rank, self.world = rank, world
        self.share = self.batch_size // world
        if self.share < 1:
            raise ValueError(f"a global batch of {batch_size} cannot be split in {world}")
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning before every epoch: a new permutation."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n // self.batch_size

    def __iter__(self) -> Iterator[torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=generator)
        offset = self.rank * self.share
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            yield order[start + offset : start + offset + self.share]
