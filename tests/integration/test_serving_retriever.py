"""`ranker.serving_retriever=continue`: the serving two-tower trains onwards from the label
retriever's weights instead of from its own initialisation."""

from __future__ import annotations

from pathlib import Path

import hydra
import pytest
import torch
from omegaconf import DictConfig
from tests.helpers.hydra import compose_config

from recsys.errors import RecsysError
from recsys.runner import load_or_prepare
from recsys.training.config import (
    continues_label_retriever,
    fit_label_retriever,
    fit_retriever_from,
)
from recsys.training.retriever import fit_features

pytestmark = pytest.mark.integration


def _config(root: Path, *extra: str) -> DictConfig:
    # lr 0: no step moves a weight, so each fit's weights are exactly where it started
    return compose_config(
        "train",
        root,
        [
            "experiment=synthetic_fast",
            "callbacks.progress_bar=null",
            "fit=all",
            "selected.retriever_epochs=1",
            "model.init=spectral",
            "model.optimizer.lr=0.0",
            *extra,
        ],
    )


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    left, right = a.state_dict(), b.state_dict()
    return left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left)


def test_the_serving_retriever_starts_where_the_label_retriever_ended(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "ranker.serving_retriever=continue")
    assert continues_label_retriever(cfg)
    data = load_or_prepare(cfg)
    state = fit_features(hydra.utils.instantiate(cfg.features), data)
    carve, label = fit_label_retriever(cfg, data, state)
    assert carve.data.train.height < data.train.height  # the labels were held out
    continued = fit_retriever_from(cfg, data, state, start=label.module)
    scratch = fit_retriever_from(cfg, data, state)
    assert _same(continued.module, label.module)
    # from scratch, the spectral init of the whole training split is another starting point
    assert not _same(scratch.module, label.module)


def test_an_unknown_serving_retriever_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RecsysError, match="scratch or continue"):
        continues_label_retriever(_config(tmp_path, "ranker.serving_retriever=warm"))
    assert not continues_label_retriever(
        _config(tmp_path, "ranker.serving_retriever=continue", "ranker.enabled=false")
    )
