from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from recsys.models.towers import BookTower, UserTower
from recsys.tasks.retrieval import MASKED, RetrievalTask, log_q

SIZES = {
    "num_users": 10,
    "num_books": 30,
    "num_authors": 5,
    "num_publishers": 4,
    "num_languages": 3,
    "num_tags": 6,
    "num_countries": 4,
    "num_year_buckets": 5,
    "num_age_buckets": 4,
}


def _books(n: int = 4) -> dict[str, torch.Tensor]:
    return {
        "book": torch.arange(2, 2 + n),
        "author": torch.tensor([2, 3, 0, 1])[:n],
        "publisher": torch.zeros(n, dtype=torch.long),
        "year": torch.ones(n, dtype=torch.long),
        "language": torch.full((n,), 2),
        "tags": torch.tensor([[2, 3], [0, 0], [4, 0], [5, 2]])[:n],
    }


def _users() -> dict[str, torch.Tensor]:
    return {
        "user": torch.tensor([2, 1, 3]),
        "history": torch.tensor([[0, 0, 5, 6], [0, 0, 0, 0], [7, 8, 9, 10]]),
        "age": torch.tensor([1, 0, 2]),
        "country": torch.tensor([2, 0, 3]),
    }


@pytest.mark.parametrize("pooling", ["mean", "attention", "mean+attention"])
def test_user_tower_shapes_norm_and_empty_history(pooling: str) -> None:
    tower = UserTower(
        SIZES, embedding_dim=8, hidden_dims=[16], output_dim=12, pooling=pooling, user_id=True
    )
    out = tower(**_users())
    assert out.shape == (3, 12)
    assert torch.isfinite(out).all()  # the empty history (row 1) must not give NaN
    torch.testing.assert_close(out.norm(dim=1), torch.ones(3))


def test_book_tower_shapes_and_side_features_matter() -> None:
    with_side = BookTower(SIZES, embedding_dim=8, hidden_dims=[16], output_dim=12)
    out = with_side(**_books())
    assert out.shape == (4, 12)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(4))
    changed = _books()
    changed["author"] = torch.tensor([4, 4, 4, 4])
    assert not torch.allclose(with_side(**changed), out)
    id_only = BookTower(
        SIZES, embedding_dim=8, hidden_dims=[16], output_dim=12, side_features=False
    )
    torch.testing.assert_close(id_only(**changed), id_only(**_books()))


def test_towers_script() -> None:
    user = torch.jit.script(
        UserTower(SIZES, embedding_dim=8, hidden_dims=[16], output_dim=12).eval()
    )
    book = torch.jit.script(
        BookTower(SIZES, embedding_dim=8, hidden_dims=[16], output_dim=12).eval()
    )
    assert user(**_users()).shape == (3, 12)
    assert book(**_books()).shape == (4, 12)


def test_linear_towers() -> None:
    """No hidden layer = one Linear from the concatenated embeddings; still unit vectors."""
    book = BookTower(SIZES, embedding_dim=8, hidden_dims=[], output_dim=12)
    user = UserTower(SIZES, embedding_dim=8, hidden_dims=[], output_dim=12)
    assert [type(m) for m in book.mlp] == [torch.nn.Linear]
    assert book.mlp[0].in_features == 8 * 6
    torch.testing.assert_close(book(**_books()).norm(dim=1), torch.ones(4))
    scripted = torch.jit.script(user.eval())
    torch.testing.assert_close(scripted(**_users()), user(**_users()))


def test_bad_pooling() -> None:
    with pytest.raises(ValueError, match="pooling"):
        UserTower(SIZES, pooling="max")


def test_loss_matches_hand_computation() -> None:
    task = RetrievalTask(temperature=0.5, logq_correction=False)
    query = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=1)
    cands = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, -1.0]]), dim=1)
    ids = torch.tensor([5, 6, 7])
    loss = task(query, cands, ids)
    s = 1 / math.sqrt(2)
    row0 = -math.log(math.exp(1 / 0.5) / (math.exp(1 / 0.5) + math.exp(s / 0.5) + math.exp(0)))
    row1 = -math.log(math.exp(s / 0.5) / (math.exp(0) + math.exp(s / 0.5) + math.exp(-1 / 0.5)))
    assert loss.item() == pytest.approx((row0 + row1) / 2, rel=1e-5)


def test_logq_correction_lowers_popular_logits() -> None:
    """The sign of the correction: a popular book's logit drops relative to a rare one's."""
    task = RetrievalTask(temperature=1.0, logq_correction=True)
    query = torch.tensor([[1.0, 0.0]])
    cands = torch.tensor([[0.6, 0.8], [0.6, 0.8]])  # same vector: equal raw logits
    freq = torch.tensor([0.5, 0.001])  # candidate 0 popular, 1 rare
    lq = log_q(freq, batch_size=64, num_uniform=16, num_candidates=1000)
    corrected = task.logits(query, cands, lq)[0]
    raw = task.logits(query, cands, None)[0]
    assert raw[0] == raw[1]
    assert corrected[0] < corrected[1]
    expected = torch.log(torch.tensor([64 * 0.5 + 16 / 1000, 64 * 0.001 + 16 / 1000]))
    torch.testing.assert_close(raw - corrected, expected)


def test_accidental_hits_are_masked() -> None:
    task = RetrievalTask(temperature=1.0, logq_correction=False)
    query = torch.eye(3)
    cands = torch.eye(3)
    ids = torch.tensor([4, 4, 9])  # rows 0 and 1 share a target book
    batch = 3
    logits = task.logits(query, cands, None)
    hits = ids.unsqueeze(0) == ids[:batch].unsqueeze(1)
    expected_masked = hits & ~torch.eye(3, dtype=torch.bool)
    assert expected_masked[0, 1]
    assert expected_masked[1, 0]
    extra = torch.zeros(3, 3, dtype=torch.bool)
    extra[2, 0] = True  # book 4 is also a positive of row 2's user
    loss = task(query, cands, ids, None, extra)
    masked = logits.clone()
    masked[expected_masked | extra] = MASKED
    manual = F.cross_entropy(masked, torch.arange(3))
    assert loss.item() == pytest.approx(manual.item(), rel=1e-6)
    assert loss.item() < F.cross_entropy(logits, torch.arange(3)).item()


def test_marked_books_are_negatives_of_their_row_only() -> None:
    """Hard negatives: each row's marked books join that row's softmax (no log q), padding
    slots are left out, and the loss rises with a marked book's score."""
    task = RetrievalTask(temperature=0.5, logq_correction=True)
    query = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=1)
    cands = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), dim=1)
    ids = torch.tensor([5, 6, 7])
    lq = torch.tensor([0.1, 0.2, 0.3])
    marked = torch.tensor([[[0.6, 0.8], [9.0, 9.0]], [[0.0, 0.0], [0.0, 0.0]]])
    valid = torch.tensor([[True, False], [False, False]])  # row 0 has one mark; row 1 none
    loss = task(query, cands, ids, lq, None, marked, valid)
    logits = task.logits(query, cands, lq)
    extra = torch.tensor([[(0.6 * 1.0) / 0.5], [MASKED]])  # row 0's mark; nothing for row 1
    manual = F.cross_entropy(torch.cat([logits, extra], dim=1), torch.arange(2))
    assert loss.item() == pytest.approx(manual.item(), rel=1e-6)
    assert loss.item() > task(query, cands, ids, lq).item()
    closer = torch.tensor([[[1.0, 0.0], [9.0, 9.0]], [[0.0, 0.0], [0.0, 0.0]]])
    assert task(query, cands, ids, lq, None, closer, valid).item() > loss.item()
