"""Ranker training: examples from candidate lists, listwise/pairwise loss, two-stage validation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import numpy as np
import scipy.sparse as sp
import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, TensorDataset

from recsys.evaluation import EvalSet, evaluate
from recsys.features.pipeline import BookFeatures
from recsys.features.ranking import pair_features
from recsys.inference.two_stage import CandidateGenerator, TwoStageRecommender
from recsys.lightning.batches import ShardedBatches, worker_share
from recsys.tasks.ranking import listwise_softmax_loss, pairwise_logistic_loss


def build_examples(
    generator: CandidateGenerator,
    users: np.ndarray,
    history: sp.csr_matrix,
    labels: sp.csr_matrix,
    books: BookFeatures,
    log_popularity: torch.Tensor,
    chunk: int = 1024,
) -> dict[str, torch.Tensor]:
    """Candidate lists with features and labels for ``users``.

    ``history`` is the input side (candidates are generated from it alone) and ``labels`` the
    held-out books; lists without any held-out book among the candidates are dropped.
    """
    parts: dict[str, list[torch.Tensor]] = {
        k: [] for k in ("features", "history", "candidates", "labels", "mask")
    }
    retriever = generator.retriever
    num_tags = int(retriever.state.tags.size)
    for start in range(0, len(users), chunk):
        batch = users[start : start + chunk]
        rows = history[batch]
        feats = retriever.features_from_matrix(batch, rows)
        excluded = [
            set(rows.indices[rows.indptr[i] : rows.indptr[i + 1]].tolist())
            for i in range(len(batch))
        ]
        cands = generator.generate(retriever.encode(feats), rows, excluded)
        dense = pair_features(cands, feats["history"], books, log_popularity, num_tags)
        safe = np.maximum(cands.books, 0)
        truth = (labels[batch].toarray() > 0)[np.arange(len(batch))[:, None], safe] & cands.mask
        keep = truth.any(1)
        parts["features"].append(dense[keep])
        parts["history"].append(feats["history"][keep])
        parts["candidates"].append(torch.from_numpy(safe[keep]))
        parts["labels"].append(torch.from_numpy(truth[keep].astype(np.float32)))
        parts["mask"].append(torch.from_numpy(cands.mask[keep]))
    return {k: torch.cat(v) for k, v in parts.items()}


class RankerDataModule(L.LightningDataModule):
    """Serves precomputed candidate lists in shuffled whole batches."""

    def __init__(
        self, examples: dict[str, torch.Tensor], batch_size: int = 256, seed: int = 0
    ) -> None:
        super().__init__()
        self.examples, self.batch_size, self.seed = examples, batch_size, seed

    def train_dataloader(self) -> DataLoader:
        keys = ("features", "history", "candidates", "labels", "mask")
        dataset = TensorDataset(*(self.examples[k] for k in keys))
        rank, world = worker_share(self)
        if world > 1:  # DDP: this worker's share of each global batch
            shard = ShardedBatches(len(dataset), self.batch_size, self.seed, rank, world)
            return DataLoader(dataset, sampler=shard, batch_size=None)
        sampler = BatchSampler(
            RandomSampler(dataset, generator=torch.Generator().manual_seed(self.seed)),
            min(self.batch_size, len(dataset)),
            drop_last=False,
        )
        return DataLoader(dataset, sampler=sampler, batch_size=None)


class RankerModule(L.LightningModule):
    """Ranker + loss + optimizer.

    Args:
        ranker: a ``Ranker``.
        optimizer: partial optimizer, called with the parameters.
        loss: ``listwise`` (softmax over each candidate list) or ``pairwise`` (logistic).
    """

    def __init__(
        self,
        ranker: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        loss: str = "listwise",
    ) -> None:
        super().__init__()
        if loss not in ("listwise", "pairwise"):
            raise ValueError(f"loss must be listwise or pairwise, got {loss}")
        self.ranker, self.optimizer_factory = ranker, optimizer
        self.loss_fn = listwise_softmax_loss if loss == "listwise" else pairwise_logistic_loss

    def training_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> torch.Tensor:
        features, history, candidates, labels, mask = batch
        scores = self.ranker(features, history, candidates)
        loss = self.loss_fn(scores, labels, mask)
        self.log("ranker/loss", loss, prog_bar=True, on_step=True, on_epoch=True)
        return loss

    def configure_optimizers(self) -> Any:
        return self.optimizer_factory(params=self.parameters())


class TwoStageEvaluation(L.Callback):
    """Logs ``val/two_stage_recall@K`` of the serving pipeline with the current ranker, and
    (``restore_best``) puts the best epoch's weights back when training ends.

    The ranker learns from lists of a label retriever trained on less data than the serving
    one, and starts to fit that retriever's quirks after a few epochs (on Amazon-Book two-stage
    Recall@20 peaks around epoch 3 and then falls), so the epoch is chosen on the serving
    pipeline itself, like the retriever's best checkpoint.
    """

    def __init__(
        self,
        make: Callable[[nn.Module], TwoStageRecommender],
        eval_set: EvalSet,
        ks: Sequence[int] = (20,),
        max_users: int | None = 5000,
        restore_best: bool = True,
    ) -> None:
        self.make, self.eval_set, self.ks, self.max_users = make, eval_set, tuple(ks), max_users
        self.restore_best = restore_best
        self.best_score = -1.0
        self.best_epoch = -1
        self.best_state: dict[str, torch.Tensor] | None = None
        self.history: list[dict[str, float]] = []  # each epoch's metrics, in order

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        assert isinstance(pl_module, RankerModule)
        pl_module.eval()
        metrics = evaluate(
            self.make(pl_module.ranker), self.eval_set, ks=self.ks, max_users=self.max_users
        )
        pl_module.train()
        self.history.append(
            {f"{m}@{k}": float(metrics[f"{m}@{k}"]) for k in self.ks for m in ("recall", "ndcg")}
        )
        for k in self.ks:
            pl_module.log(f"val/two_stage_recall@{k}", metrics[f"recall@{k}"], prog_bar=True)
            pl_module.log(f"val/two_stage_ndcg@{k}", metrics[f"ndcg@{k}"])
        score = metrics[f"recall@{self.ks[0]}"]
        if score > self.best_score:
            self.best_score, self.best_epoch = score, trainer.current_epoch
            self.best_state = {
                k: v.detach().clone() for k, v in pl_module.ranker.state_dict().items()
            }

    def state_dict(self) -> dict[str, Any]:
        """Saved with each checkpoint, so a resumed fit still knows the best epoch before it."""
        return {
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "best_state": self.best_state,
            "history": self.history,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_score = float(state_dict["best_score"])
        self.best_epoch = int(state_dict["best_epoch"])
        self.best_state = state_dict["best_state"]
        self.history = list(state_dict["history"])

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.restore_best and self.best_state is not None:
            assert isinstance(pl_module, RankerModule)
            pl_module.ranker.load_state_dict(self.best_state)
