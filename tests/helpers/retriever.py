"""A real two-tower retriever trained for one short epoch (for tests that need one)."""

from __future__ import annotations

from functools import partial

import lightning as L
import torch

from recsys.data.prepared import PreparedData
from recsys.features.pipeline import FeatureState
from recsys.inference.two_tower import TwoTowerRecommender
from recsys.lightning.callbacks import recommender_from_module
from recsys.lightning.retrieval import RetrievalDataModule, TwoTowerModule
from recsys.models.towers import BookTower, UserTower
from recsys.tasks.retrieval import RetrievalTask


def quick_retriever(
    data: PreparedData, state: FeatureState, epochs: int = 1
) -> TwoTowerRecommender:
    sizes = state.sizes()
    datamodule = RetrievalDataModule(data, state, batch_size=256)
    module = TwoTowerModule(
        UserTower(sizes, embedding_dim=16, hidden_dims=[32], output_dim=16),
        BookTower(sizes, embedding_dim=16, hidden_dims=[32], output_dim=16),
        RetrievalTask(temperature=0.1, num_uniform_negatives=64),
        partial(torch.optim.Adam, lr=0.01),
    )
    module.attach(datamodule)
    L.Trainer(
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    ).fit(module, datamodule=datamodule)
    return recommender_from_module(module.eval())
