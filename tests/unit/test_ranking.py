from __future__ import annotations

import math
from functools import partial

import lightning as L
import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recsys.features.ranking import FEATURES, Candidates, pair_features
from recsys.inference.cooccurrence import CooccurrenceRecommender, top_neighbours
from recsys.lightning.ranking import RankerDataModule, RankerModule
from recsys.models.ranker import Ranker
from recsys.tasks.ranking import listwise_softmax_loss, pairwise_logistic_loss

SIZES = {"num_books": 12}


def test_listwise_loss_by_hand() -> None:
    scores = torch.tensor([[2.0, 1.0, 0.0, 5.0]])
    labels = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True, False]])  # the 5.0 is padding
    z = math.log(math.exp(2) + math.exp(1) + math.exp(0))
    expected = -0.5 * ((2 - z) + (1 - z))
    assert listwise_softmax_loss(scores, labels, mask).item() == pytest.approx(expected, rel=1e-6)
    # a list with no positive is skipped
    both = listwise_softmax_loss(
        torch.cat([scores, scores]), torch.cat([labels, labels * 0]), torch.cat([mask, mask])
    )
    assert both.item() == pytest.approx(expected, rel=1e-6)


def test_pairwise_loss_by_hand() -> None:
    scores = torch.tensor([[3.0, 1.0, 2.0]])
    labels = torch.tensor([[1.0, 0.0, 0.0]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    expected = -(math.log(1 / (1 + math.exp(-2))) + math.log(1 / (1 + math.exp(-1)))) / 2
    assert pairwise_logistic_loss(scores, labels, mask).item() == pytest.approx(expected, rel=1e-6)


def test_cooccurrence_cosine_and_top_neighbours() -> None:
    # users: {2,3}, {2,3}, {2,4}; books 2 and 3 co-read twice
    x = sp.csr_matrix(np.array([[0, 0, 1, 1, 0], [0, 0, 1, 1, 0], [0, 0, 1, 0, 1]], dtype=float))
    model = CooccurrenceRecommender.fit(x, k=1)
    sim = model.neighbours.toarray()
    assert sim[2, 3] == pytest.approx(2 / math.sqrt(3 * 2))
    assert sim[2, 4] == 0.0  # only the top-1 neighbour is kept for book 2
    assert sim[4, 2] == pytest.approx(1 / math.sqrt(1 * 3))
    assert np.diag(sim).sum() == 0
    scores = model.score(np.array([0]), sp.csr_matrix(np.array([[0, 0, 0, 1, 0]], dtype=float)))
    assert scores[0].argmax() == 2
    assert model.explain([3, 4], 2) == [
        (3, pytest.approx(sim[3, 2])),
        (4, pytest.approx(sim[4, 2])),
    ]
    top = top_neighbours(sp.csr_matrix(np.array([[0, 1.0, 1.0, 0.5]])), 2)
    assert top.toarray().tolist() == [[0, 1.0, 1.0, 0]]


def test_cooccurrence_pair_values_match_the_table() -> None:
    """The sorted-key lookup the reasons use equals indexing the dense table, for every
    pair in any shape (absent pairs 0), from a table whose column order came unsorted."""
    rng = np.random.default_rng(0)
    dense = np.where(rng.random((30, 30)) < 0.2, rng.random((30, 30)), 0).astype(np.float32)
    table = sp.csr_matrix(dense)
    order = rng.permutation(table.indptr[1])  # row 0's entries shuffled
    table.indices[: order.size] = table.indices[order]
    table.data[: order.size] = table.data[order]
    model = CooccurrenceRecommender(table)
    rows, columns = rng.integers(0, 30, (4, 7)), rng.integers(0, 30, (4, 7))
    np.testing.assert_array_equal(model.pair_values(rows, columns), dense[rows, columns])
    hist, books = np.array([3, 0, 3]), np.array([5, 1])
    together = model.pair_values(hist[None, :], books[:, None])
    np.testing.assert_array_equal(together, dense[np.ix_(hist, books)].T)
    empty = CooccurrenceRecommender(sp.csr_matrix((4, 4), dtype=np.float32))
    assert empty.pair_values(np.array([1, 2]), np.array([3, 0])).tolist() == [0, 0]


def _books() -> dict[str, torch.Tensor]:
    n = SIZES["num_books"]
    author = torch.tensor([0, 0, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6])
    year = torch.tensor([0, 0, 3, 3, 5, 0, 3, 3, 3, 3, 3, 3])
    tags = torch.zeros(n, 2, dtype=torch.long)
    tags[2] = torch.tensor([2, 3])
    tags[5] = torch.tensor([3, 0])
    tags[6] = torch.tensor([4, 0])
    return {
        "book": torch.arange(n),
        "author": author,
        "publisher": torch.zeros(n, dtype=torch.long),
        "year": year,
        "language": torch.zeros(n, dtype=torch.long),
        "tags": tags,
    }


def test_pair_features_by_hand() -> None:
    cands = Candidates(
        books=np.array([[3, 5, 6, -1]]),
        retrieval_score=np.array([[1.0, 0.5, 0.2, 0.0]], dtype=np.float32),
        retrieval_rank=np.array([[0, 1, 5, 5]], dtype=np.float32),
        from_retrieval=np.array([[True, True, False, False]]),
        cooc_score=np.array([[0.3, 0.0, 0.9, 0.0]], dtype=np.float32),
        cooc_rank=np.array([[1, 4, 0, 4]], dtype=np.float32),
        from_cooc=np.array([[True, False, True, False]]),
        mf_score=np.array([[2.0, 3.0, 1.0, 0.0]], dtype=np.float32),
        mf_rank=np.array([[1, 0, 9, 9]], dtype=np.float32),
        from_mf=np.array([[True, True, False, False]]),
        ease_score=np.array([[0.2, 0.8, -0.1, 0.0]], dtype=np.float32),
        ease_rank=np.array([[3, 0, 7, 7]], dtype=np.float32),
        from_ease=np.array([[True, True, False, False]]),
    )
    history = torch.tensor(
        [[0, 2, 4]]
    )  # books 2 (author 2, year 3, tags {2,3}) and 4 (author 3, year 5)
    pop = torch.log1p(torch.arange(12, dtype=torch.float32))
    out = pair_features(cands, history, _books(), pop, num_tags=6)
    f = {name: out[0, :, i].tolist() for i, name in enumerate(FEATURES)}
    assert f["author_match"][:3] == [0.5, 0.5, 0.0]  # book 3 shares author 2, book 5 author 3
    assert f["year_distance"][:3] == [pytest.approx(1.0), 0.0, pytest.approx(1.0)]
    assert f["year_known"][:3] == [1.0, 0.0, 1.0]
    assert f["tag_overlap"][:3] == [0.0, pytest.approx(0.5), 0.0]  # {3} vs {2,3}
    assert f["log_popularity"][:3] == pytest.approx([math.log1p(3), math.log1p(5), math.log1p(6)])
    assert f["log_history_length"][0] == pytest.approx(math.log1p(2))
    assert f["from_cooc"][:3] == [1.0, 0.0, 1.0]
    # list-relative scores: gap to the list's best, share of the list's best
    assert f["retrieval_score_gap"][:3] == pytest.approx([0.0, -0.5, -0.8])
    assert f["cooc_score_share"][:3] == pytest.approx([1 / 3, 0.0, 1.0])
    assert f["mf_score"][:3] == [2.0, 3.0, 1.0]
    assert f["mf_score_gap"][:3] == [-1.0, 0.0, -2.0]
    assert f["from_mf"][:3] == [1.0, 1.0, 0.0]
    assert f["ease_score"][:3] == pytest.approx([0.2, 0.8, -0.1])
    assert f["ease_rank"][:3] == pytest.approx([math.log1p(3), 0.0, math.log1p(7)])
    assert f["from_ease"][:3] == [1.0, 1.0, 0.0]
    assert f["ease_score_share"][:3] == pytest.approx([0.25, 1.0, -0.125])
    assert out[0, 3].abs().sum() == 0  # padding row


@pytest.mark.parametrize("embedding_dim", [8, 0])  # 0: the dense features alone
def test_ranker_shapes_and_script(embedding_dim: int) -> None:
    ranker = Ranker(
        SIZES, num_features=len(FEATURES), embedding_dim=embedding_dim, hidden_dims=[16]
    )
    assert (ranker.book is None) == (embedding_dim == 0)
    feats = torch.randn(2, 5, len(FEATURES))
    scores = ranker(feats, torch.tensor([[0, 2, 3], [0, 0, 0]]), torch.randint(2, 12, (2, 5)))
    assert scores.shape == (2, 5)
    scripted = torch.jit.script(ranker.eval())
    torch.testing.assert_close(
        scripted(feats, torch.tensor([[0, 2, 3], [0, 0, 0]]), torch.full((2, 5), 4)),
        ranker(feats, torch.tensor([[0, 2, 3], [0, 0, 0]]), torch.full((2, 5), 4)),
    )
    with pytest.raises(ValueError, match="embedding_dim must be >= 0"):
        Ranker(SIZES, num_features=len(FEATURES), embedding_dim=-1)


def test_ranker_learns_a_planted_signal() -> None:
    """Positives are the candidates with a high 'author_match'; the ranker must find them."""
    gen = torch.Generator().manual_seed(0)
    n, k = 600, 20
    feats = torch.randn(n, k, len(FEATURES), generator=gen)
    labels = torch.zeros(n, k)
    best = feats[:, :, FEATURES.index("author_match")].argmax(1)
    labels[torch.arange(n), best] = 1.0
    examples = {
        "features": feats,
        "history": torch.zeros(n, 3, dtype=torch.long),
        "candidates": torch.randint(2, 12, (n, k), generator=gen),
        "labels": labels,
        "mask": torch.ones(n, k, dtype=torch.bool),
    }
    ranker = Ranker(SIZES, num_features=len(FEATURES), embedding_dim=4, hidden_dims=[32])
    ranker.set_standardisation(feats, examples["mask"])
    module = RankerModule(ranker, partial(torch.optim.Adam, lr=0.01))
    trainer = L.Trainer(
        max_epochs=15,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=RankerDataModule(examples, batch_size=64))
    with torch.no_grad():
        top = ranker.eval()(feats, examples["history"], examples["candidates"]).argmax(1)
    assert (top == best).float().mean() > 0.8
