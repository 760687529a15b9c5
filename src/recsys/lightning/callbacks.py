"""Callbacks: full-catalogue validation metrics every epoch; a budget-aware cosine LR."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Timer

from recsys.evaluation import EvalSet, evaluate
from recsys.inference.two_tower import TwoTowerRecommender
from recsys.lightning.retrieval import TwoTowerModule


def recommender_from_module(module: TwoTowerModule) -> TwoTowerRecommender:
    """The exact-scoring recommender for the module's current weights."""
    assert module.user_table is not None, "call attach() first"
    assert module.feature_state is not None, "call attach() first"
    side = {"age": module.user_table["age"], "country": module.user_table["country"]}
    return TwoTowerRecommender(
        module.user_tower,
        module.book_embeddings().numpy(),
        module.feature_state,
        module.task.temperature,
        side,
    )


class RetrievalEvaluation(L.Callback):
    """Logs ``val/recall@K`` and ``val/ndcg@K`` (exact scores, full catalogue, batched) at the
    end of every ``every_n_epochs`` training epochs.

    Args:
        eval_set: the validation carve.
        ks: cut-offs.
        max_users: evaluate a fixed seeded sample of users (None = all).
        every_n_epochs: how often.
    """

    def __init__(
        self,
        eval_set: EvalSet,
        ks: Sequence[int] = (20,),
        max_users: int | None = None,
        every_n_epochs: int = 1,
    ) -> None:
        self.eval_set, self.ks = eval_set, tuple(ks)
        self.max_users, self.every_n_epochs = max_users, every_n_epochs

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        assert isinstance(pl_module, TwoTowerModule)
        was_training = pl_module.training
        pl_module.eval()
        metrics = evaluate(
            recommender_from_module(pl_module), self.eval_set, ks=self.ks, max_users=self.max_users
        )
        pl_module.train(was_training)
        for k in self.ks:
            pl_module.log(f"val/recall@{k}", metrics[f"recall@{k}"], prog_bar=True)
            pl_module.log(f"val/ndcg@{k}", metrics[f"ndcg@{k}"])


class BudgetCosineLR(L.Callback):
    """Cosine learning-rate decay over the whole training budget, stepped every batch.

    Progress is the larger of the share of ``trainer.max_time`` spent and the share of the
    estimated steps (``max_epochs``) done, so a time-boxed run (``max_time``) anneals to
    ``min_factor * lr`` exactly when its time runs out instead of stopping at a high rate.

    Args:
        min_factor: final learning rate as a share of the optimiser's initial one.
        warmup_steps: linear warm-up from 0 over this many steps.
    """

    def __init__(self, min_factor: float = 0.0, warmup_steps: int = 0) -> None:
        if not 0.0 <= min_factor <= 1.0:
            raise ValueError(f"min_factor must be in [0, 1], got {min_factor}")
        self.min_factor, self.warmup_steps = min_factor, warmup_steps
        self.base_lrs: list[list[float]] = []
        self.timer: Timer | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.base_lrs:  # a resumed fit restored them (its optimiser holds decayed rates)
            self.base_lrs = [[g["lr"] for g in opt.param_groups] for opt in trainer.optimizers]
        self.timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)  # type: ignore[attr-defined]

    def state_dict(self) -> dict[str, Any]:
        return {"base_lrs": self.base_lrs}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.base_lrs = [list(lrs) for lrs in state_dict.get("base_lrs", [])]

    def progress(self, trainer: L.Trainer) -> float:
        """Share of the budget spent, in [0, 1]."""
        shares = [0.0]
        steps = trainer.estimated_stepping_batches
        if math.isfinite(steps) and steps > 0:
            shares.append(trainer.global_step / steps)
        remaining = self.timer.time_remaining() if self.timer is not None else None
        if self.timer is not None and remaining is not None:
            elapsed = self.timer.time_elapsed()
            shares.append(elapsed / max(elapsed + remaining, 1e-9))
        return min(max(shares), 1.0)

    def factor(self, trainer: L.Trainer) -> float:
        cosine = 0.5 * (1.0 + math.cos(math.pi * self.progress(trainer)))
        value = self.min_factor + (1.0 - self.min_factor) * cosine
        if self.warmup_steps and trainer.global_step < self.warmup_steps:
            value *= (trainer.global_step + 1) / self.warmup_steps
        return value

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        factor = self.factor(trainer)
        if trainer.world_size > 1 and self.timer is not None:
            # each worker's clock differs: rank 0's rate for all, or the replicas drift apart
            factor = float(trainer.strategy.broadcast(factor, src=0))
        for opt, lrs in zip(trainer.optimizers, self.base_lrs, strict=True):
            for group, lr in zip(opt.param_groups, lrs, strict=True):
                group["lr"] = lr * factor
        pl_module.log("train/lr_factor", factor, on_step=True, on_epoch=False)
