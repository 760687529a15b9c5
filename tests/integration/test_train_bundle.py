"""Train two-tower on synthetic data through the real Hydra config, then the bundle."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from tests.helpers.hydra import compose_config
from tests.helpers.retriever import quick_retriever

from recsys.bundle.reader import load_bundle
from recsys.data.prepared import PreparedData
from recsys.drift import SIGNALS
from recsys.errors import BundleError
from recsys.evaluation import EvalSet, evaluate
from recsys.features.vocab import NUM_RESERVED

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def trained(trained_bundle: dict[str, Any]) -> dict[str, Any]:
    return trained_bundle


def test_learns_three_times_popularity(trained: dict[str, Any]) -> None:
    assert trained["metrics"]["recall@20"] >= 3 * trained["popularity"]["recall@20"]


def test_unseen_user_with_genre_pure_history_gets_that_genre(trained: dict[str, Any]) -> None:
    bundle = load_bundle(trained["bundle"])
    books = bundle.books.select("book_id", pl.col("tags").list.first().alias("genre"))
    rec = bundle.recommender()
    for genre in books.get_column("genre").unique().sort().to_list()[:3]:
        history = books.filter(genre=genre).get_column("book_id").head(8).to_list()
        frame = pl.DataFrame({"user_id": ["brand-new-reader"], "history": [history]})
        scores = rec.score_vectors(rec.encode_frame(frame))[0]
        scores[:NUM_RESERVED] = -np.inf
        scores[bundle.state.books.encode(pl.Series(history))] = -np.inf
        top = np.argsort(-scores)[:10]
        top_ids = bundle.state.books.decode(top)
        top_genres = books.filter(pl.col("book_id").is_in(top_ids)).get_column("genre")
        assert (top_genres == genre).mean() >= 0.7, (genre, top_genres.to_list())


def test_bundle_round_trip_gives_identical_scores(trained: dict[str, Any]) -> None:
    """Golden test: bundle -> recommender scores equal the offline evaluation's."""
    data: PreparedData = trained["data"]
    bundle = load_bundle(trained["bundle"])
    eval_set = EvalSet.from_prepared(data)
    metrics = evaluate(bundle.recommender(), eval_set, ks=(10, 20, 50))
    for key in ("recall@20", "ndcg@20", "recall@50"):
        assert metrics[key] == pytest.approx(trained["metrics"][key], abs=1e-9)
    users = eval_set.users[:16]
    from_bundle = bundle.recommender().score(users, eval_set.train[users])
    # towers rebuilt from the bundle reproduce the stored book embeddings
    import torch

    from recsys.features.pipeline import book_feature_table

    table = book_feature_table(bundle.books, bundle.state)
    with torch.no_grad():
        rebuilt = bundle.book_tower(**table).numpy()
    np.testing.assert_allclose(
        rebuilt[NUM_RESERVED:], bundle.book_embeddings[NUM_RESERVED:], atol=1e-5
    )
    # frame path (serving) == matrix path (evaluation) for users with short histories
    hist = bundle.histories.filter(pl.col("history").list.len() <= bundle.state.config.max_history)
    frame = hist.head(16).join(bundle.users, on="user_id", how="left")
    idx = bundle.state.users.encode(frame.get_column("user_id"))
    rec = bundle.recommender()
    via_frame = rec.score_vectors(rec.encode_frame(frame))
    via_matrix = rec.score(idx, eval_set.train[idx])
    np.testing.assert_allclose(via_frame, via_matrix, atol=1e-5)
    assert from_bundle.shape == (16, bundle.state.books.size)


def test_manifest_facts(trained: dict[str, Any]) -> None:
    bundle = load_bundle(trained["bundle"])
    manifest = bundle.manifest
    assert manifest.score_fn == "cosine/temperature"
    assert manifest.embedding_dim == 64
    assert manifest.vocab_sizes["num_books"] == bundle.state.books.size
    assert manifest.data_fingerprint == trained["data"].summary["data_fingerprint"]
    assert manifest.metrics["recall@20"] == trained["metrics"]["recall@20"]
    assert manifest.fit == {"fit": "carve", **trained["data"].summary["split"]}
    assert manifest.metrics["test/two_stage/recall@20"] > 0  # the test carve, reported
    assert (bundle.path / "towers" / "user_tower.pt").is_file()  # TorchScript export worked
    assert (bundle.path.parent / "LATEST").read_text().strip() == bundle.version
    assert load_bundle(bundle.path.parent).version == bundle.version
    # the ranker's per-epoch two-stage validation, and the epoch kept is its best
    history = trained["ranker"]["validation"]
    assert history
    recalls = [epoch["recall@20"] for epoch in history]
    assert recalls[trained["ranker"]["best_epoch"]] == max(recalls)


def test_training_summary_is_a_checksummed_part_and_older_bundles_load(
    trained: dict[str, Any], tmp_path: Path
) -> None:
    bundle = load_bundle(trained["bundle"])
    assert "summary/training.json" in bundle.manifest.files
    summary = bundle.training_summary
    assert summary is not None
    assert set(summary.signals) == set(SIGNALS)
    val_users = trained["data"].val["user_id"].n_unique()
    assert summary.signals["history_length"].n == val_users
    assert 0 < summary.signals["top_score"].n <= min(val_users, 1000)
    older = _copy(trained, tmp_path)  # as written before the summary existed
    shutil.rmtree(older / "summary")
    manifest = json.loads((older / "manifest.json").read_text())
    del manifest["files"]["summary/training.json"]
    (older / "manifest.json").write_text(json.dumps(manifest))
    assert load_bundle(older).training_summary is None


def _copy(trained: dict[str, Any], tmp_path: Path) -> Path:
    target = tmp_path / "bundle"
    shutil.copytree(trained["bundle"], target)
    return target


def test_tampered_bundle_is_refused(trained: dict[str, Any], tmp_path: Path) -> None:
    copy = _copy(trained, tmp_path)
    emb = copy / "embeddings" / "books.npy"
    data = bytearray(emb.read_bytes())
    data[-1] ^= 0xFF
    emb.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"checksum mismatch for embeddings/books.npy"):
        load_bundle(copy)


def test_incomplete_or_edited_bundle_is_refused(trained: dict[str, Any], tmp_path: Path) -> None:
    copy = _copy(trained, tmp_path)
    (copy / "fallback" / "popularity.parquet").unlink()
    with pytest.raises(BundleError, match="missing file"):
        load_bundle(copy)
    copy2 = _copy(trained, tmp_path / "2")
    (copy2 / "notes.txt").write_text("hi")
    with pytest.raises(BundleError, match="unexpected file"):
        load_bundle(copy2)
    copy3 = _copy(trained, tmp_path / "3")
    manifest = json.loads((copy3 / "manifest.json").read_text())
    manifest["manifest_schema"] = 99
    (copy3 / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="manifest_schema 99"):
        load_bundle(copy3)
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nowhere")


def test_bundle_recommender_contract(trained: dict[str, Any]) -> None:
    data: PreparedData = trained["data"]
    rec = load_bundle(trained["bundle"]).recommender()
    train = data.matrix("train")
    users = np.arange(NUM_RESERVED, NUM_RESERVED + 30)
    top, scores = rec.recommend(users, train[users], k=20)
    for row, user in zip(top, users, strict=True):
        assert len(set(row.tolist())) == 20
        assert (row >= NUM_RESERVED).all()
        assert set(row.tolist()).isdisjoint(train[user].indices.tolist())
    assert (np.diff(scores, axis=1) <= 1e-6).all()
    empty = train[[1]]
    empty.data[:] = 0
    empty.eliminate_zeros()
    top, _ = rec.recommend(np.array([1]), empty, k=10)
    assert (top >= NUM_RESERVED).all()


def test_bundle_has_index_and_indexed_recall_matches_exact(trained: dict[str, Any]) -> None:
    data: PreparedData = trained["data"]
    bundle = load_bundle(trained["bundle"])
    assert bundle.index is not None
    assert bundle.index.index.ntotal == bundle.state.books.size - NUM_RESERVED  # real books only
    assert bundle.manifest.index_spec is not None
    assert bundle.manifest.index_spec["metric"] == "inner_product"
    eval_set = EvalSet.from_prepared(data)
    exact = evaluate(bundle.recommender(use_index=False), eval_set, ks=(20,))
    indexed = evaluate(bundle.recommender(use_index=True), eval_set, ks=(20,))
    assert indexed["recall@20"] == pytest.approx(exact["recall@20"], abs=0.002)


def test_rebuild_index_makes_new_version(trained: dict[str, Any], tmp_path: Path) -> None:
    from recsys.index.faiss_index import IndexSpec
    from recsys.training.index import rebuild_index

    family = tmp_path / "bundles" / "synthetic"
    source = family / Path(trained["bundle"]).name
    shutil.copytree(trained["bundle"], source)
    before = load_bundle(source)
    path = rebuild_index(before, IndexSpec(kind="hnsw", recall_target=0.99, recall_k=50))
    after = load_bundle(family)  # LATEST now names the new version
    assert after.path == path
    assert after.version != before.version
    assert after.manifest.parent_version == before.version
    assert after.manifest.index_spec["factory"].startswith("HNSW")
    assert after.manifest.index_spec["recall"] >= 0.99
    assert load_bundle(source).manifest.index_spec["factory"] == "Flat"  # source untouched
    np.testing.assert_array_equal(after.book_embeddings, before.book_embeddings)


def test_similar_books(trained: dict[str, Any]) -> None:
    from recsys.errors import RecsysError

    bundle = load_bundle(trained["bundle"])
    rec = bundle.recommender()
    genre = bundle.books.select("book_id", pl.col("tags").list.first().alias("genre"))
    top, _ = rec.similar_books(["b5"], k=10)
    assert top.shape == (1, 10)
    assert bundle.state.books.encode_one("b5") not in top[0]
    ids = bundle.state.books.decode(top[0])
    want = genre.filter(book_id="b5").item(0, "genre")
    assert (genre.filter(pl.col("book_id").is_in(ids)).get_column("genre") == want).mean() >= 0.7
    with pytest.raises(RecsysError, match="unknown book id"):
        rec.similar_books(["no-such-book"], k=5)


def test_exclusions_still_return_k(trained: dict[str, Any]) -> None:
    data: PreparedData = trained["data"]
    rec = load_bundle(trained["bundle"]).recommender()
    train = data.matrix("train")
    heavy = np.argsort(-np.diff(train.indptr))[:5]
    top, _ = rec.recommend(heavy, train[heavy], k=50)
    for row, user in zip(top, heavy, strict=True):
        assert (row >= NUM_RESERVED).all()
        assert set(row.tolist()).isdisjoint(train[user].indices.tolist())
    allowed = np.zeros(rec.n_books, dtype=bool)
    allowed[NUM_RESERVED::7] = True  # a filter keeping 1 book in 7
    vectors = rec.encode(rec.features_from_matrix(heavy, train[heavy]))
    top, _ = rec.search(vectors, 20, [set() for _ in heavy], allowed)
    assert allowed[top].all()


def test_two_stage_bundle(trained: dict[str, Any]) -> None:
    data: PreparedData = trained["data"]
    bundle = load_bundle(trained["bundle"])
    assert bundle.has_ranker
    rec = bundle.two_stage()
    train = data.matrix("train")
    users = np.arange(NUM_RESERVED, NUM_RESERVED + 40)
    top, scores = rec.recommend(users, train[users], k=20)
    for row, user in zip(top, users, strict=True):
        assert len(set(row.tolist())) == 20
        assert set(row.tolist()).isdisjoint(train[user].indices.tolist())
    assert (np.diff(scores, axis=1) <= 1e-6).all()
    # all three sources contribute candidates; MF is stored in the bundle
    assert bundle.mf is not None
    assert bundle.mf.n_books == bundle.state.books.size
    cands = rec.retrieve(users, train[users]).candidates
    for source in (cands.from_retrieval, cands.from_mf, cands.from_cooc):
        assert source.any()
    assert (cands.from_mf & ~cands.from_retrieval).any()  # MF adds books retrieval missed
    assert "two_stage/recall@20" in bundle.manifest.metrics
    eval_set = EvalSet.from_prepared(data)
    again = evaluate(rec, eval_set, ks=(20,))
    assert again["recall@20"] == pytest.approx(
        bundle.manifest.metrics["two_stage/recall@20"], abs=1e-9
    )


def test_explanations_name_history_books(trained: dict[str, Any]) -> None:
    data: PreparedData = trained["data"]
    bundle = load_bundle(trained["bundle"])
    rec = bundle.two_stage()
    train = data.matrix("train")
    user = NUM_RESERVED + 3
    frame = rec.inspect(user, train[[user]])
    assert frame.height > 20
    assert set(frame.columns) >= {"book_idx", "score", "retrieval_score", "cooc_score", "reason"}
    assert frame.get_column("score").is_sorted(descending=True)
    history = set(train[user].indices.tolist())
    assert set(frame.get_column("reason_book").to_list()) <= history
    assert set(frame.get_column("reason").to_list()) <= {"co-read", "similar"}
    co_read = frame.filter(pl.col("reason") == "co-read")
    assert (co_read.get_column("from_cooc") == 1.0).all()


def test_ranker_training_lists_do_not_leak(prepared: PreparedData) -> None:
    """Labels never appear in the history the candidates come from, nor in the data the
    label retriever and co-occurrence were fitted on."""
    from recsys.features.pipeline import FeaturePipeline, book_feature_table
    from recsys.inference.cooccurrence import CooccurrenceRecommender
    from recsys.inference.mf import MatrixFactorisation
    from recsys.inference.two_stage import CandidateGenerator
    from recsys.lightning.ranking import build_examples
    from recsys.training.ranker import carve_ranker_labels, log_popularity

    carved = carve_ranker_labels(prepared, 0.2, seed=1).data
    history, labels = carved.matrix("train"), carved.matrix("val")
    assert history.multiply(labels).nnz == 0
    assert history.nnz + labels.nnz == prepared.matrix("train").nnz
    cooc = CooccurrenceRecommender.from_prepared(carved)
    assert cooc.neighbours.nnz > 0

    state = FeaturePipeline().fit(
        carved.train, carved.books, carved.users, carved.user_vocab, carved.book_vocab
    )
    retriever = quick_retriever(carved, state)  # trained on the carve: it never saw the labels
    mf = MatrixFactorisation.fit(history, factors=8, iterations=5)  # the carve only, too
    generator = CandidateGenerator(
        retriever, cooc, n_retrieval=30, n_cooc=30, max_candidates=70, mf=mf, n_mf=30
    )
    users = np.arange(NUM_RESERVED, NUM_RESERVED + 60)
    examples = build_examples(
        generator,
        users,
        history,
        labels,
        book_feature_table(carved.books, state),
        log_popularity(carved),
    )
    assert len(examples["labels"]) > 0
    for hist, cands, lab, mask in zip(
        examples["history"],
        examples["candidates"],
        examples["labels"],
        examples["mask"],
        strict=True,
    ):
        hist_books = set(hist[hist > 0].tolist())
        positives = set(cands[lab > 0].tolist())
        assert positives
        assert hist_books.isdisjoint(positives)
        assert hist_books.isdisjoint(cands[mask].tolist())


def test_retrain_only_the_ranker(trained: dict[str, Any], tmp_path: Path) -> None:
    from recsys.jobs.train_ranker import main as train_ranker_main

    family = tmp_path / "bundles" / "synthetic"
    source = family / Path(trained["bundle"]).name
    shutil.copytree(trained["bundle"], source)
    cfg = compose_config(
        "train_ranker",
        tmp_path,
        [f"bundle={source}", "ranker.trainer.max_epochs=1", "ranker.module.loss=pairwise"],
    )
    result = train_ranker_main(cfg)
    before, after = load_bundle(source), load_bundle(family)
    assert after.path == Path(result["bundle"])
    assert after.manifest.parent_version == before.version
    np.testing.assert_array_equal(after.book_embeddings, before.book_embeddings)
    assert after.manifest.metrics["recall@20"] == before.manifest.metrics["recall@20"]
    assert after.manifest.metrics["two_stage/recall@20"] == pytest.approx(
        result["metrics"]["recall@20"]
    )
    # the new ranker's test-carve figures replace the old ranker's
    test_key = "test/two_stage/recall@20"
    assert after.manifest.metrics[test_key] != before.manifest.metrics[test_key]
    assert (after.path / "ranker" / "ranker.state_dict.pt").read_bytes() != (
        before.path / "ranker" / "ranker.state_dict.pt"
    ).read_bytes()
    old_summary, new_summary = before.training_summary, after.training_summary
    assert old_summary is not None
    assert new_summary is not None
    assert new_summary.signals["history_length"] == old_summary.signals["history_length"]
    assert new_summary.signals["top_score"] != old_summary.signals["top_score"]  # new ranker


def test_ranker_from_another_feature_list_is_refused(
    trained: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bundle whose ranker saw a different pair-feature list is refused with the fix named."""
    import recsys.bundle.reader as reader

    monkeypatch.setattr(reader, "FEATURES", (*reader.FEATURES, "a_newer_feature"))
    with pytest.raises(BundleError, match="retrain the ranker"):
        _ = load_bundle(trained["bundle"]).ranker
