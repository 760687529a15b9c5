"""The two model stages behind the personalised endpoints, as one small interface.

:class:`RecommendationService` asks a :class:`Stages` for candidates (stage 1: user tower +
FAISS index + co-occurrence) and for ranker scores (stage 2). :class:`LocalStages` runs both in
this process (uvicorn runner, Ray fused topology); the Ray chained topology implements the same
interface with deployment handles (``recsys.serving.ray_app.RemoteStages``).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import scipy.sparse as sp

from recsys.inference.two_stage import Retrieved, TwoStageRecommender


class Stages(Protocol):
    def retrieve(
        self, users: np.ndarray, history: sp.csr_matrix, social: sp.csr_matrix | None = None
    ) -> Retrieved:
        """Candidates for users (vocabulary indices) with histories as CSR rows; ``social``:
        per row, how many of the readers they follow read each book (or None)."""
        ...

    def rank(self, retrieved: Retrieved) -> np.ndarray:
        """Ranker scores ``[B, K]`` of the candidates, ``-inf`` on padding."""
        ...


class LocalStages:
    """Both stages in this process, from one two-stage recommender."""

    def __init__(self, pipeline: TwoStageRecommender) -> None:
        self.pipeline = pipeline

    def retrieve(
        self, users: np.ndarray, history: sp.csr_matrix, social: sp.csr_matrix | None = None
    ) -> Retrieved:
        return self.pipeline.retrieve(users, history, social=social)

    def rank(self, retrieved: Retrieved) -> np.ndarray:
        return self.pipeline.rank(retrieved)
