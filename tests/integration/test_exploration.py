"""Exploration over real HTTP: a share of each user list goes to books with few reads (a book
just added through the API may be one), drawn to match the reader, each with its propensity in
the response and in the store; off unless configured."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from recsys.bundle.reader import load_bundle
from recsys.serving.app import create_app
from recsys.serving.exploration import Explorer, draw_one
from recsys.serving.live import Live
from recsys.serving.local import serve_in_thread
from recsys.serving.service import RecommendationService

pytestmark = pytest.mark.integration


def serve(bundle: Path, db: Path, exploration: dict[str, Any] | None) -> Any:
    config: dict[str, Any] = {"store": {"url": f"sqlite:///{db}"}, "auth": {"enabled": False}}
    if exploration is not None:
        config["exploration"] = exploration
    live = Live.from_config(config)
    app = create_app(lambda: RecommendationService(load_bundle(bundle), 10.0, live=live))
    return live, app


@pytest.fixture(scope="module")
def exploring(
    trained_bundle: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[httpx.Client, Live]]:
    db = tmp_path_factory.mktemp("exploration") / "store.db"
    live, app = serve(Path(trained_bundle["bundle"]), db, {"share": 0.2, "max_reads": 3})
    with serve_in_thread(app) as base, httpx.Client(base_url=base, timeout=30) as client:
        yield client, live


def test_a_share_of_slots_goes_to_new_books_with_propensities(
    exploring: tuple[httpx.Client, Live], trained_bundle: dict[str, Any]
) -> None:
    client, live = exploring
    bundle = load_bundle(trained_bundle["bundle"])
    reads = bundle.popularity_counts
    index = {b: i + 2 for i, b in enumerate(bundle.state.books.ids.to_list())}
    new = {"book_id": "fresh-1", "title": "A Fresh Voice", "authors": "New Writer", "year": 2026}
    assert client.post("/books", json=new).status_code == 201
    users = [str(u) for u in bundle.known_histories["user_id"].head(30)]
    seen_pools = set()
    first: dict[str, Any] = {}
    for user in users:
        body = client.post(f"/recommendations/users/{user}", json={"limit": 10}).json()
        first = first or body
        got = [r["book_id"] for r in body["recommendations"]]
        explored = body["metadata"]["explored"]
        assert [e["position"] for e in explored] == [9, 10]  # 20 % of 10: the last two
        assert len(set(got)) == 10
        for slot in explored:
            book = slot["book_id"]
            assert got[slot["position"] - 1] == book
            assert book == "fresh-1" or reads[index[book]] <= 3  # few readers
            assert 0 < slot["propensity"] <= 1
            seen_pools.add(slot["pool"])
        reasons = [r["reasoning"] for r in body["recommendations"][8:]]
        assert reasons == ["new in the catalogue, picked to match your reading"] * 2
    assert min(seen_pools) > 2
    assert live.explorations is not None
    live.explorations.flush()
    logged = live.stores.experiments.explorations_of(users[0])
    # the store holds what the response said, under the response's request id
    meta = first["metadata"]
    assert [
        (r["request_id"], r["book_id"], r["position"], r["propensity"], r["pool"]) for r in logged
    ] == [
        (meta["request_id"], e["book_id"], e["position"], e["propensity"], e["pool"])
        for e in meta["explored"]
    ]
    assert all(r["bundle"] == bundle.version for r in logged)


def test_off_unless_configured(trained_bundle: dict[str, Any], tmp_path: Path) -> None:
    live, app = serve(Path(trained_bundle["bundle"]), tmp_path / "store.db", None)
    user = str(load_bundle(trained_bundle["bundle"]).known_histories.row(0)[0])
    with serve_in_thread(app) as base, httpx.Client(base_url=base, timeout=30) as client:
        body = client.post(f"/recommendations/users/{user}", json={"limit": 10}).json()
    assert body["metadata"]["explored"] == []
    assert live.explorations is not None
    live.explorations.flush()
    assert live.stores.experiments.explorations_of(user) == []


def test_exploration_leaves_pins_in_place(trained_bundle: dict[str, Any], tmp_path: Path) -> None:
    """A pin in the last slot keeps it: exploration takes the last slots no pin holds."""
    bundle = load_bundle(trained_bundle["bundle"])
    user, history = bundle.known_histories.row(0)
    reads = bundle.popularity_counts
    index = {b: i + 2 for i, b in enumerate(bundle.state.books.ids.to_list())}
    popular = next(  # a well-read book the reader has not read: never an exploration pick
        b for b in bundle.books["book_id"] if b not in set(history) and reads[index[b]] > 10
    )
    rules = tmp_path / "rules.yaml"
    rules.write_text(f"pins: [{{name: last, book_id: {popular}, slot: 10}}]\n")
    config = {
        "store": {"url": f"sqlite:///{tmp_path / 'store.db'}"},
        "auth": {"enabled": False},
        "exploration": {"share": 0.2, "max_reads": 3},
        "rules": {"file": str(rules)},
    }
    live = Live.from_config(config)
    app = create_app(lambda: RecommendationService(bundle, 10.0, live=live))
    with serve_in_thread(app) as base, httpx.Client(base_url=base, timeout=30) as client:
        body = client.post(f"/recommendations/users/{user}", json={"limit": 10}).json()
    got = [r["book_id"] for r in body["recommendations"]]
    assert got[9] == popular
    assert [e["position"] for e in body["metadata"]["explored"]] == [8, 9]
    assert "pin:last" in body["metadata"]["rules"]


class PerBook(Explorer):
    """The exploration pool and draws checked one book at a time (the rule as first written,
    before the array version): the reference the served code must agree with."""

    def _pool(self, new: np.ndarray, req: Any, history: list[int], kept: list[int]) -> np.ndarray:
        works = self.path.catalogue.works
        check = self.path.offerable(req.exclude, req.allowed, set(history))
        read_history = works.works_read(history)
        read = read_history | works.works_read(kept)
        return np.array(
            [
                int(b)
                for b in new.tolist()
                if b not in set(kept)
                and check(b)
                and (b >= len(works) or works.work_of(b) not in read)
                and self.path.order.waits(b, read_history, check) is None
            ],
            dtype=np.int64,
        )

    def _draw_slots(
        self, pool: np.ndarray, logits: np.ndarray, n: int, kept: list[int], caps: Any
    ) -> list[tuple[int, float]]:
        works, authors = self.path.catalogue.works, self.path.catalogue.authors
        author = lambda b: authors[b] if b < len(authors) else None  # noqa: E731
        series = lambda b: works.series_of(b) if b < len(works) else -1  # noqa: E731
        work = lambda b: works.work_of(b) if b < len(works) else -b - 1  # noqa: E731
        count_a: dict[Any, int] = {}
        count_s: dict[int, int] = {}
        for b in kept:
            count_a[author(b)] = count_a.get(author(b), 0) + 1
            count_s[series(b)] = count_s.get(series(b), 0) + 1
        max_a, max_s = caps.max_per_author, caps.max_per_series

        def allowed_now(b: int) -> bool:
            if max_a and author(b) is not None and count_a.get(author(b), 0) >= max_a:
                return False
            return not (max_s and series(b) >= 0 and count_s.get(series(b), 0) >= max_s)

        alive = np.array([allowed_now(int(b)) for b in pool], dtype=bool)
        out: list[tuple[int, float]] = []
        while len(out) < n and alive.any():
            pick, probability = draw_one(self._rng, logits, alive)
            book = int(pool[pick])
            out.append((book, probability))
            count_a[author(book)] = count_a.get(author(book), 0) + 1
            count_s[series(book)] = count_s.get(series(book), 0) + 1
            for i, other in enumerate(pool.tolist()):
                if alive[i] and (work(other) == work(book) or not allowed_now(other)):
                    alive[i] = False
        return out


def test_exploration_picks_what_the_per_book_rule_picks(trained_bundle: dict[str, Any]) -> None:
    """Same seed, same lists: the array version of the pool (listed, allowed, unread works,
    series order) and of the draws (one per work, diversity caps) against the per-book rule,
    with a wide share, caps of one per author and series and an excluded book, for readers
    with series in their histories (the synthetic data has works and series)."""
    bundle = load_bundle(trained_bundle["bundle"])
    live = Live.from_config(
        {
            "store": {"url": None},
            "auth": {"enabled": False},
            "exploration": {"share": 0.5, "max_reads": 40},
        }
    )
    live.rules.apply({"diversity": {"max_per_author": 1, "max_per_series": 1}})
    service = RecommendationService(bundle, 10.0, live=live)
    path = service.path
    users = [str(u) for u in bundle.known_histories["user_id"].head(40)]
    excluded = [str(bundle.books["book_id"][3])]
    explored = 0
    for user in users:
        lists = []
        for explorer in (Explorer(path), PerBook(path)):
            explorer._rng = np.random.default_rng(7)
            path.explorer = explorer
            answer = service.for_user(user, 12, excluded, None)
            assert answer.source == "personalized"
            lists.append((answer.books, answer.scores, answer.explored))
        assert lists[0] == lists[1]
        explored += len(lists[0][2])
    assert explored >= 3 * len(users)  # most readers got their six slots' worth explored
    service.close()


def test_exploration_reuses_the_vectors_retrieval_computed(
    trained_bundle: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One user-tower pass a request: exploration scores new books with the vectors the
    two-stage retrieval returned (``Retrieved.vectors``), and draws what it draws when it
    encodes the readers again itself."""
    bundle = load_bundle(trained_bundle["bundle"])
    live = Live.from_config(
        {"store": {"url": None}, "auth": {"enabled": False}, "exploration": {"share": 0.5}}
    )
    service = RecommendationService(bundle, 10.0, live=live)
    path = service.path
    calls = {"n": 0}
    encode = path.retriever.encode

    def counted(features: Any) -> Any:
        calls["n"] += 1
        return encode(features)

    monkeypatch.setattr(path.retriever, "encode", counted)
    two_stage = path._two_stage
    users = [str(u) for u in bundle.known_histories["user_id"].head(15)]
    explored = 0
    for user in users:
        lists = []
        for reuse in (True, False):
            path.explorer._rng = np.random.default_rng(3)
            if reuse:
                monkeypatch.setattr(path, "_two_stage", two_stage)
            else:  # a stage that does not return vectors: exploration encodes them
                monkeypatch.setattr(path, "_two_stage", lambda *a: (two_stage(*a)[0], None))
            calls["n"] = 0
            answer = service.for_user(user, 12, [], None)
            assert answer.source == "personalized"
            lists.append((answer.books, answer.scores, answer.explored))
            assert calls["n"] == (1 if reuse else 2)
        assert lists[0] == lists[1]
        explored += len(lists[0][2])
    assert explored > 0
    service.close()


def test_new_books_are_made_again_after_a_catalogue_edit(trained_bundle: dict[str, Any]) -> None:
    """The new-book set and its vectors are kept between batches, and made again when the
    catalogue changes: a book taken off leaves the pool, a book added joins it (its vector
    with it), and ``max_reads`` applies at once."""
    bundle = load_bundle(trained_bundle["bundle"])
    live = Live.from_config(
        {
            "store": {"url": None},
            "auth": {"enabled": False},
            "exploration": {"share": 0.2, "max_reads": 40},
        }
    )
    service = RecommendationService(bundle, 10.0, live=live)
    explorer = service.path.explorer
    new, where, vectors = explorer._new_books()
    assert new.size
    assert explorer._new_books()[0] is new  # kept while nothing changes
    reads = service.path.reads
    assert (reads[new[new < reads.size]] <= 40).all()
    gone = int(new[0])
    service.catalogue.remove(str(service.catalogue.ids[gone]))
    after, _, _ = explorer._new_books()
    assert gone not in after.tolist()
    assert after.size == new.size - 1
    service.add_books([{"book_id": "brand-new", "title": "Brand New", "authors": "Someone"}])
    added = service.catalogue.index["brand-new"]
    grown, where, vectors = explorer._new_books()
    assert added in grown.tolist()
    embeddings = service.path.retriever.book_embeddings
    np.testing.assert_array_equal(vectors[where[added]], embeddings[added])
    service.path.exploration = service.path.exploration.model_copy(update={"max_reads": 0})
    assert explorer._new_books()[0].size < grown.size
    service.close()
