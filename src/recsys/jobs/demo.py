"""`make demo`: the product end to end on the offline synthetic default.

Prepare data -> train retrieval and the ranker -> bundle with a FAISS index -> load the bundle
and recommend, with reasons, for a few users.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from omegaconf import DictConfig

from recsys.bundle.reader import load_bundle
from recsys.jobs.train import main as train


def main(cfg: DictConfig) -> dict[str, Any]:
    result = train(cfg)
    bundle = load_bundle(result["bundle"])
    titles = dict(bundle.books.select("book_id", "title").iter_rows())
    vocab = bundle.state.books

    def title(index: int) -> str:
        book_id = vocab.decode(np.array([index]))[0]
        return str(titles.get(book_id, book_id))

    if bundle.has_ranker:
        rec = bundle.two_stage()
        for user_id, history in bundle.histories.head(int(cfg.demo.users)).iter_rows():
            print(
                f"\nuser {user_id} recently read: "
                + "; ".join(titles.get(b, b) for b in history[-4:])
            )
            user = bundle.state.users.encode_one(user_id)
            frame = rec.inspect(user, bundle.history_matrix([history])).head(int(cfg.demo.k))
            for book, score, kind, why in frame.select(
                "book_idx", "score", "reason", "reason_book"
            ).iter_rows():
                verb = "readers of" if kind == "co-read" else "because you read"
                print(f"  {score:7.3f}  {title(book)}  ({verb} {title(why)})")
    print(f"\nbundle: {bundle.path}")
    return result
