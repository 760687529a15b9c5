"""`fit=all`: a bundle meant to serve learns from every interaction (no part held out) for the
epochs chosen beforehand, and says so; `fit=carve` keeps the three parts apart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.helpers.hydra import compose_config

from recsys.bundle.reader import load_bundle
from recsys.data.prepared import PreparedData
from recsys.errors import DataError

pytestmark = pytest.mark.integration

OVERRIDES = ["experiment=synthetic_fast", "callbacks.progress_bar=null"]


@pytest.fixture(scope="module")
def fit_all(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from recsys.jobs.train import main as train_main

    root = tmp_path_factory.mktemp("fit_all")
    cfg = compose_config(
        "train",
        root,
        [
            *OVERRIDES,
            "fit=all",
            "selected.retriever_epochs=2",
            "selected.ranker_epochs=1",
            "ranker.serving_retriever=continue",  # as experiment=amazon_book serves
        ],
    )
    result = train_main(cfg)
    result["data"] = PreparedData.load(root / "data" / "processed" / "synthetic")
    return result


def test_every_interaction_trains_and_nothing_is_reported(
    fit_all: dict[str, Any], trained_bundle: dict[str, Any]
) -> None:
    data, carved = fit_all["data"], trained_bundle["data"]
    assert data.val.height == 0
    assert data.test.height == 0
    assert carved.val.height > 0  # the carve run held both parts out...
    assert carved.test.height > 0
    # ...and the serving fit learns from all of them (same data, same seed)
    assert data.train.height == carved.train.height + carved.val.height + carved.test.height
    assert data.summary["split"]["fit"] == "all"
    assert data.summary["split"]["test_fraction"] == carved.summary["split"]["test_fraction"]
    assert fit_all["rows"] == {}
    assert fit_all["metrics"] == {}


def test_the_selected_epochs_are_trained(fit_all: dict[str, Any]) -> None:
    assert fit_all["epochs"] == 2
    assert fit_all["label_retriever"]["epochs"] == 2  # the retriever's count by default
    assert fit_all["ranker"]["best_epoch"] == 0  # one epoch, the last kept
    manifest = load_bundle(fit_all["bundle"]).manifest
    assert manifest.metrics == {}
    assert manifest.fit is not None
    assert manifest.fit["fit"] == "all"  # and the carve the epochs were chosen on:
    assert manifest.fit["kind"] == "random_holdout"


def test_the_served_bundle_knows_and_excludes_every_interaction(fit_all: dict[str, Any]) -> None:
    bundle = load_bundle(fit_all["bundle"])
    data = fit_all["data"]
    known = sum(len(h) for h in bundle.known_histories.get_column("history").to_list())
    assert known == data.train.height
    pipeline = bundle.two_stage()
    users = np.unique(data.train.get_column("user_idx").to_numpy())[:50]
    history = data.matrix("train")[users]
    top, _ = pipeline.recommend(users, history, 10)
    for row, user_history in enumerate(np.split(history.indices, history.indptr[1:-1])):
        assert not set(top[row].tolist()) & set(user_history.tolist())
    assert (top >= 0).all()


def test_the_serving_recipe_measured_on_the_carve(tmp_path: Path) -> None:
    """``epochs=selected`` with ``fit=carve``: each stage trains exactly its selected epochs
    (no early stop, the last kept), as fit=all will, and the carve still reports both parts."""
    from recsys.jobs.train import main as train_main

    cfg = compose_config(
        "train",
        tmp_path,
        [
            *OVERRIDES,
            "epochs=selected",
            "selected.label_retriever_epochs=1",
            "selected.retriever_epochs=2",
            "selected.ranker_epochs=1",
            "ranker.serving_retriever=continue",
            "trainer.max_epochs=9",  # the search budget: ignored here
        ],
    )
    result = train_main(cfg)
    assert result["epochs"] == 2
    assert result["best_epoch"] == 1
    assert result["label_retriever"]["epochs"] == 1
    assert result["ranker"]["best_epoch"] == 0
    assert result["ranker"]["validation"] == []  # nothing chosen on validation...
    assert result["rows"]["two_stage"]["recall@20"] > result["rows"]["popularity"]["recall@20"]
    assert result["test_rows"]["two_stage"]["recall@20"] > 0  # ...and both carves reported


def test_an_unknown_epochs_setting_is_refused(tmp_path: Path) -> None:
    from recsys.errors import RecsysError
    from recsys.jobs.train import main as train_main

    cfg = compose_config("train", tmp_path, [*OVERRIDES, "epochs=best"])
    with pytest.raises(RecsysError, match="epochs must be search or selected"):
        train_main(cfg)


def test_an_unknown_fit_is_refused_with_the_choices(tmp_path: Path) -> None:
    from recsys.runner import load_or_prepare

    cfg = compose_config("train", tmp_path, [*OVERRIDES, "fit=everything"])
    with pytest.raises(DataError, match=r"fit=carve .* fit=all"):
        load_or_prepare(cfg)


def test_drift_reference_is_the_histories_served(fit_all: dict[str, Any]) -> None:
    """Nothing held out: the summary's population is the training users, each history
    counted once, as serving reads it."""
    bundle = load_bundle(fit_all["bundle"])
    summary = bundle.training_summary
    assert summary is not None
    lengths = bundle.known_histories.get_column("history").list.len().to_numpy()
    reference = summary.signals["history_length"]
    assert reference == type(reference).numeric(lengths)
    assert reference.n == bundle.known_histories.height


def test_retraining_the_ranker_of_a_serving_bundle(fit_all: dict[str, Any], tmp_path: Path) -> None:
    import shutil

    from recsys.jobs.train_ranker import main as train_ranker_main

    family = tmp_path / "bundles" / "synthetic"
    source = family / Path(fit_all["bundle"]).name
    shutil.copytree(fit_all["bundle"], source)
    cfg = compose_config("train_ranker", tmp_path, [f"bundle={source}"])
    result = train_ranker_main(cfg)
    assert result["metrics"] == {}
    assert load_bundle(family).manifest.metrics == {}


def test_sweeps_cannot_optimise_a_test_carve_figure() -> None:
    from recsys.errors import RecsysError
    from recsys.runner import optimized_metric

    with pytest.raises(RecsysError, match="test-carve"):
        optimized_metric({"test/recall@20": 0.3}, "test/recall@20")
