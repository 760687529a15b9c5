"""Callbacks: full-catalogue validation metrics every epoch."""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L

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
