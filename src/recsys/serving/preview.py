"""What would reader X see, and why: the operator console's per-user preview.

The list is the one the service would serve now (the path of
``POST /recommendations/users/{id}``, without the response cache). Beside it: every candidate
the sources proposed, with the rank each source gave it, the ranker's features and score, its
place after the request's exclusions and its reason; and, for one book, why it is or is not in
the list (already read, filtered, not a candidate, ranked below the cut, not in the catalogue or
removed from it, or the reader erased).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch

from recsys.features.ranking import FEATURES, Candidates
from recsys.features.vocab import NUM_RESERVED
from recsys.serving.personalised import Answer, friends_read
from recsys.serving.schemas import (
    HistoryItem,
    Preview,
    PreviewBook,
    PreviewCandidate,
    PreviewIn,
    WhyNot,
)
from recsys.serving.service import RecommendationService

HISTORY_SHOWN = 20
SOURCES = (  # name in the preview, then the Candidates fields: proposed by it, its rank
    ("two_tower", "from_retrieval", "retrieval_rank"),
    ("ease", "from_ease", "ease_rank"),
    ("mf", "from_mf", "mf_rank"),
    ("cooccurrence", "from_cooc", "cooc_rank"),
)


@dataclass
class Reader:
    """What the verdicts need about the reader: their history row and what is admissible."""

    user_id: str
    matrix: sp.csr_matrix | None  # None: nothing personal is known
    allowed: np.ndarray | None
    answer: Answer | None
    unwanted: set[int] = field(default_factory=set)  # marked not interested or disliked

    @property
    def seen(self) -> set[int]:
        return set() if self.matrix is None else set(self.matrix.indices.tolist())


class PreviewBuilder:
    """One preview on ``service``'s bundle."""

    def __init__(
        self, service: RecommendationService, req: PreviewIn, retrieval_only: bool = False
    ) -> None:
        self.service, self.req, self.retrieval_only = service, req, retrieval_only
        self.catalogue = service.catalogue
        self.friends: dict[int, list[str]] = {}  # "friends are reading": book -> followees

    def _id(self, index: int) -> str:
        return str(self.catalogue.ids[index])

    def _title(self, index: int) -> str | None:
        return self.catalogue.titles[index]

    def build(self, user_id: str) -> Preview:
        service, req = self.service, self.req
        erased, _ = service.stores.events.serving_history(user_id)
        if erased:
            allowed = self.catalogue.allowed(req.filters, set())
            return self._preview("erased", [], Reader(user_id, None, allowed, None), [])
        known, marks, friends = service.reader(user_id)
        history = known or []
        unwanted = self.catalogue.works.editions(service.indices(marks.unwanted))
        allowed, _ = service.allowed(req.filters, unwanted)  # as the served list has it
        answer = service.for_user(user_id, req.limit, [], req.filters, self.retrieval_only)
        matrix = service.history_matrix([history]) if history else None
        reader = Reader(user_id, matrix, allowed, answer, unwanted)
        if matrix is None:
            return self._preview("unknown_user", history, reader, [])
        if answer.source != "personalized":
            return self._preview("fallback", history, reader, [])
        if service.pipeline is None or self.retrieval_only:  # one stage: nothing ranked
            return self._preview("personal", history, reader, [])
        self.friends = service.friend_books(friends, set(matrix.indices.tolist()) | unwanted)
        cands, dense, scores, encoded = service.candidates_of(user_id, matrix, self.friends)
        candidates = self._candidates(cands, dense.numpy()[0], scores[0], encoded[0], reader)
        return self._preview("personal", history, reader, candidates)

    def _candidates(
        self,
        cands: Candidates,
        dense: np.ndarray,
        scores: np.ndarray,
        history: torch.Tensor,
        reader: Reader,
    ) -> list[PreviewCandidate]:
        """Every candidate, best score first, with its sources, features and reason."""
        assert self.service.pipeline is not None
        assert reader.answer is not None
        keep = np.flatnonzero(cands.books[0] >= 0)
        rows = keep[np.argsort(-scores[keep], kind="stable")]
        books = cands.books[0][rows]
        why, kinds = self.service.pipeline.reasons(
            history, books, cands.from_cooc[0][rows].astype(bool)
        )
        answer = reader.answer
        listed = set(answer.books)
        n_social = self.service.pipeline.generator.n_social
        friend_rank = {b: i + 1 for i, b in enumerate(list(self.friends)[:n_social])}
        out, position = [], 0
        for row, book, w, kind in zip(rows.tolist(), books.tolist(), why, kinds, strict=True):
            admissible = reader.allowed is None or bool(reader.allowed[book])
            position += admissible
            out.append(
                PreviewCandidate(
                    book_id=self._id(book),
                    title=self._title(book),
                    score=float(scores[row]),
                    position=position if admissible else None,
                    listed=book in listed,
                    admissible=admissible,
                    sources={
                        **{
                            name: int(getattr(cands, rank)[0][row]) + 1
                            for name, flag, rank in SOURCES
                            if getattr(cands, flag)[0][row]
                        },
                        **({"friends": friend_rank[book]} if book in friend_rank else {}),
                    },
                    features={n: float(dense[row][i]) for i, n in enumerate(FEATURES)},
                    reasoning=friends_read(self.friends.get(book))
                    or self.service.path.reason(w, kind),
                )
            )
        return out

    def why(self, reader: Reader, candidates: list[PreviewCandidate]) -> WhyNot | None:
        """The verdict on the requested book, if one was asked about."""
        book_id = self.req.book_id
        if book_id is None:
            return None
        index = self.catalogue.index.get(book_id)
        if index is None:
            return WhyNot(
                book_id=book_id,
                title=None,
                verdict="not_in_catalogue",
                detail="no book with this id is in the catalogue",
            )
        verdict, detail = self._verdict(index, reader, candidates)
        return WhyNot(book_id=book_id, title=self._title(index), verdict=verdict, detail=detail)  # type: ignore[arg-type]

    def _verdict(
        self, index: int, reader: Reader, candidates: list[PreviewCandidate]
    ) -> tuple[str, str]:
        answer = reader.answer
        if answer is None:
            return "erased", "the reader was erased: nothing personal is served to this id"
        if not self.catalogue.listed[index]:
            return "removed", "removed from the catalogue: never recommended"
        if index in reader.seen:
            return "already_read", "in the reader's history: read books are never recommended"
        works = self.catalogue.works
        read = works.works_read(reader.seen)
        if works.work_of(index) in read:
            other = next(b for b in reader.seen if works.work_of(b) == works.work_of(index))
            return "edition_read", (
                f"the reader read another edition of this work ({self._title(other)}): "
                "no edition of a read work is recommended"
            )
        if index in answer.books:
            place = answer.books.index(index) + 1
            filled = answer.from_model is not None and place > answer.from_model
            how = " (filled in from popularity: too few candidates passed)" if filled else ""
            return "listed", f"in the list at place {place} of {len(answer.books)}{how}"
        if index in reader.unwanted:
            return "not_interested", (
                "the reader marked it not interested or disliked it: left out of their lists "
                "until they withdraw it (DELETE /users/{id}/preferences)"
            )
        if reader.allowed is not None and not reader.allowed[index]:
            return "filtered", "left out by the request's filters"
        if answer.source != "personalized":
            reason = answer.fallback_reason or "no personal list"
            return "not_personal", f"the list comes from {answer.source} ({reason})"
        ordered = self._reading_order(index, reader, read)
        if ordered is not None:
            return ordered
        if not candidates:
            return "not_a_candidate", "this bundle answers from the two-tower alone (no ranker)"
        found = next((c for c in candidates if c.book_id == self._id(index)), None)
        if found is not None:
            last = answer.scores[answer.from_model - 1] if answer.from_model else None
            cut = "" if last is None else f"; the list's last book scored {last:.3f}"
            proposed = ", ".join(found.sources)
            return "below_the_cut", (
                f"a candidate (from {proposed}) ranked {found.position} of "
                f"{sum(c.admissible for c in candidates)} with score {found.score:.3f}; the "
                f"list keeps {self.req.limit}{cut}"
            )
        return "not_a_candidate", self._not_proposed(index, reader)

    def _reading_order(self, index: int, reader: Reader, read: set[int]) -> tuple[str, str] | None:
        """The verdict when works or series keep the book out: another edition is listed,
        or an earlier volume is unread and could be proposed."""
        assert reader.answer is not None
        works = self.catalogue.works
        edition = next(
            (b for b in reader.answer.books if works.work_of(b) == works.work_of(index)), None
        )
        if edition is not None:
            return "edition_listed", (
                f"another edition of this work is in the list ({self._title(edition)}): "
                "one edition per work"
            )
        check = self.service.path.offerable(reader.unwanted, reader.allowed, reader.seen)
        first = self.service.path.order.waits(index, read, check)
        if first is None:
            return None
        name = works.series_names[works.series_of(index)]
        return "earlier_volume_unread", (
            f"#{works.position_of(index):g} of {name} waits for #{works.position_of(first):g} "
            f"({self._title(first)}), which the reader has not read: volumes come in order"
        )

    def _not_proposed(self, index: int, reader: Reader) -> str:
        """Where the two-tower would put the book among the reader's unread books."""
        assert reader.matrix is not None
        assert self.service.pipeline is not None
        vector = self.service.user_vector(reader.user_id, reader.matrix)
        scores = self.service.retriever.book_embeddings @ vector
        unread = np.ones(len(scores), dtype=bool)
        unread[:NUM_RESERVED] = False
        unread[reader.matrix.indices] = False
        rank = int((scores[unread] > scores[index]).sum()) + 1
        kept = self.service.pipeline.generator.n_retrieval
        others = (
            "EASE, MF and co-occurrence know only the books the model was trained on"
            if index >= self.service.pipeline.base_books
            else "EASE, MF and co-occurrence did not list it either"
        )
        return (
            f"no source proposed it: by exact score the two-tower ranks it {rank} of "
            f"{int(unread.sum())} unread books and proposes about its top {kept} (through an "
            f"approximate index); {others}"
        )

    def _preview(
        self,
        status: str,
        history: list[str],
        reader: Reader,
        candidates: list[PreviewCandidate],
    ) -> Preview:
        answer, index = reader.answer, self.catalogue.index
        in_bundle = set(self.service.histories.get(reader.user_id, []))
        served = (
            []
            if answer is None
            else [
                PreviewBook(book_id=self._id(b), title=self._title(b), score=s, reasoning=r)
                for b, s, r in zip(answer.books, answer.scores, answer.reasons, strict=True)
            ]
        )
        return Preview(
            user_id=reader.user_id,
            bundle_version=self.service.version,
            status=status,  # type: ignore[arg-type]
            source=answer.source if answer is not None else "popularity",
            fallback_reason=answer.fallback_reason if answer is not None else "erased",
            history=[
                HistoryItem(
                    book_id=b,
                    title=self._title(index[b]) if b in index else None,
                    source="bundle" if b in in_bundle else "event",
                )
                for b in history[-HISTORY_SHOWN:]
            ],
            history_length=len(history),
            served=served,
            candidates=candidates,
            why=self.why(reader, candidates),
        )


def preview(
    service: RecommendationService, user_id: str, req: PreviewIn, retrieval_only: bool = False
) -> Preview:
    """What ``user_id`` would be served from ``service``'s bundle now (``retrieval_only``: an
    experiment arm without the ranker), and why."""
    return PreviewBuilder(service, req, retrieval_only).build(user_id)
