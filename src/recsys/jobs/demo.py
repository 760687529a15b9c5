"""`make demo`: the product end to end on the offline synthetic default.

Prepare data -> train retrieval and the ranker -> bundle with a FAISS index -> load the bundle
and recommend, with reasons, for a few users.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
from omegaconf import DictConfig

from recsys.bundle.reader import Bundle, load_bundle
from recsys.runner import load_or_prepare
from recsys.training.config import run_training


def main(cfg: DictConfig) -> dict[str, Any]:
    L.seed_everything(cfg.seed, workers=True)
    data = load_or_prepare(cfg)
    run = run_training(cfg, data)  # as `recsys train` does
    run.report(data.name)
    bundle = load_bundle(run.bundle)
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
    serve_and_ask(bundle, str(bundle.histories.item(0, "user_id")))
    return run.as_dict()


def serve_and_ask(bundle: Bundle, user_id: str) -> None:
    """Start the HTTP app (uvicorn, loopback) as `recsys serve` runs it — auth on, a SQLite
    store, trending, cache — send real requests with a token, print, stop."""
    import tempfile

    import httpx

    from recsys.serving.app import create_app
    from recsys.serving.auth import Authenticator
    from recsys.serving.live import Live
    from recsys.serving.local import serve_in_thread
    from recsys.serving.service import RecommendationService

    with tempfile.TemporaryDirectory(prefix="recsys-demo-") as scratch:
        live = Live.from_config({"store": {"url": f"sqlite:///{scratch}/store.db"}})
        live.auth = Authenticator(secret="demo-only-secret-not-for-production-use")
        token = live.auth.issue(user_id)
        headers = {"Authorization": f"Bearer {token}"}
        app = create_app(lambda: RecommendationService(bundle, stage_timeout_s=1.0, live=live))
        with (
            serve_in_thread(app) as base,
            httpx.Client(base_url=base, timeout=30, headers=headers) as client,
        ):
            first = client.post(f"/recommendations/users/{user_id}", json={"limit": 5}).json()
            show(f"POST {base}/recommendations/users/{user_id} (bearer token for {user_id})", first)
            top = first["recommendations"][0]["book_id"]
            client.post("/events", json={"user_id": user_id, "book_id": top, "type": "read"})
            after = client.post(f"/recommendations/users/{user_id}", json={"limit": 5}).json()
            show(f"POST /events ({user_id} read {top}), then ask again: it updates at once", after)
            other = client.post("/recommendations/users/new-reader", json={"limit": 3})
            print(
                f"\nPOST /recommendations/users/new-reader with {user_id}'s token -> "
                f"{other.status_code} {other.json()['detail']}"
            )
            anonymous = httpx.get(f"{base}/recommendations/trending", params={"limit": 3})
            show("GET /recommendations/trending (public, no token)", anonymous.json())
    print(
        "\nauth is on by default: `recsys token sub=<user id>` issues a development token; "
        "`recsys serve auth.enabled=false` turns auth off."
    )
    print(f"serve it yourself: recsys serve bundle={bundle.path}  (OpenAPI docs at /docs)")


def show(title: str, body: dict[str, Any]) -> None:
    meta = body["metadata"]
    print(f"\n{title} -> source={meta['source']} latency={meta['latency_ms']} ms")
    for item in body["recommendations"]:
        print(f"  {item['confidence_score']:8.3f}  {item['title']}  — {item['reasoning']}")
