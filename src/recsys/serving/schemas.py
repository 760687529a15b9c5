"""Request and response models (validated at the ingress; documented in OpenAPI)."""

from __future__ import annotations

import math
import time
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, model_validator

MAX_LIMIT = 50
MAX_LIST = 200
# ids in paths: any printable text up to 200 characters (no control characters: NUL, CR, LF)
PATH_ID_PATTERN = r"^[^\x00-\x1f\x7f]+$"


class RequestModel(BaseModel):
    """A request body: unknown keys refused, numbers finite, text valid Unicode without NUL,
    types as declared.

    JSON allows ``NaN``/``Infinity`` in Python's parser and ``1e309`` overflows to infinity;
    a lone surrogate (``"\\ud800"``) parses but cannot be stored or sent back, and PostgreSQL
    text cannot hold NUL (``"\\u0000"``). Each is a 422 naming the field, never a 500.
    Strict: ``true`` is not the number 1 nor ``"5"`` the number 5 (the OpenAPI document says
    integer, and clients get what it says).
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)

    @model_validator(mode="before")
    @classmethod
    def _clean(cls, data: Any) -> Any:
        _check_clean(data, ())
        return data


def _check_clean(value: Any, where: tuple[str | int, ...]) -> None:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"{_path(where)}: text is not valid Unicode") from None
        if "\x00" in value:
            raise ValueError(f"{_path(where)}: text must not contain NUL (\\u0000)")
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{_path(where)}: numbers must be finite")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_clean(key, where)
            _check_clean(item, (*where, str(key)))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_clean(item, (*where, i))


def _path(where: tuple[str | int, ...]) -> str:
    return ".".join(str(w) for w in where) or "body"


class Filters(RequestModel):
    """Optional constraints on recommended books."""

    year_min: int | None = Field(None, ge=0, le=3000)
    year_max: int | None = Field(None, ge=0, le=3000)
    languages: list[str] | None = Field(None, max_length=20)
    authors: list[str] | None = Field(None, max_length=50)

    @model_validator(mode="after")
    def _range(self) -> Filters:
        if (
            self.year_min is not None
            and self.year_max is not None
            and self.year_min > self.year_max
        ):
            raise ValueError("year_min must not exceed year_max")
        return self


class RecommendRequest(RequestModel):
    """Body of POST /recommendations/users/{user_id}."""

    limit: int = Field(10, ge=1, le=MAX_LIMIT)
    exclude: list[str] = Field(default_factory=list, max_length=MAX_LIST)
    filters: Filters | None = None


class SimilarRequest(RequestModel):
    """Body of POST /recommendations/books/{book_id}."""

    limit: int = Field(10, ge=1, le=MAX_LIMIT)
    filters: Filters | None = None


class UserContext(RequestModel):
    user_id: str | None = Field(None, max_length=200)
    preferences: list[str] = Field(default_factory=list, max_length=MAX_LIST)


class SimilarBooksV2Request(RequestModel):
    """Body of POST /v2/recommendations/similar-books."""

    book_id: str = Field(..., min_length=1, max_length=200)
    limit: int = Field(10, ge=1, le=MAX_LIMIT)
    user_context: UserContext | None = None


class HybridRequest(RequestModel):
    """Body of POST /recommendations/hybrid: any mix of a known user, an anonymous history and
    seed books."""

    user_id: str | None = Field(None, max_length=200)
    history: list[str] = Field(default_factory=list, max_length=MAX_LIST)
    seed_books: list[str] = Field(default_factory=list, max_length=MAX_LIST)
    limit: int = Field(10, ge=1, le=MAX_LIMIT)
    filters: Filters | None = None


class Recommendation(BaseModel):
    book_id: str
    title: str | None
    author: str | None
    confidence_score: float
    reasoning: str


Source = Literal["personalized", "similar", "hybrid", "popularity", "trending"]


class Explored(BaseModel):
    book_id: str
    position: int = Field(description="place in the list, 1 = first")
    propensity: float = Field(description="the probability the exploration policy gave it")
    pool: int = Field(description="books it was drawn from")


class Metadata(BaseModel):
    source: Source
    bundle_version: str
    latency_ms: float
    request_id: str
    fallback_reason: str | None = None
    cache: Literal["l1", "l2"] | None = None  # set when the answer came from the cache
    experiment: str | None = None  # the active experiment the user is in
    variant: str | None = None
    impression_id: str | None = None  # a list logged under an experiment: name it in feedback
    rules: list[str] = Field(
        default_factory=list, description="business rules that shaped this list (by name)"
    )
    explored: list[Explored] = Field(
        default_factory=list, description="exploration slots of this list (new books)"
    )
    history_length: int | None = Field(
        None, description="books in the reader's history behind a personal list"
    )
    from_model: int | None = Field(
        None,
        description="how many of the list's first books the model proposed (personal lists; "
        "the rest were topped up from popularity)",
    )


class RecommendationResponse(BaseModel):
    recommendations: list[Recommendation]
    metadata: Metadata


ID = Field(..., min_length=1, max_length=200, pattern=r"^[^\s/\x00-\x1f\x7f]+$")
MAX_EVENTS = 1000
EventType = Literal[
    "view",
    "rate",
    "want_to_read",
    "read",
    "purchase",
    "not_interested",
    "dislike",
    "less_of_author",
]


class EventIn(RequestModel):
    """One interaction. Send ``event_id`` to make retries idempotent."""

    user_id: str = ID
    book_id: str = ID
    type: EventType
    value: float | None = Field(None, ge=0, le=10, description="rating (type=rate): 0-10")
    timestamp: float | None = Field(
        None, description="epoch seconds; default: when received. Not more than 1 h ahead."
    )
    event_id: str | None = Field(None, min_length=1, max_length=128, pattern=PATH_ID_PATTERN)

    @model_validator(mode="after")
    def _check(self) -> EventIn:
        if self.type == "rate" and self.value is None:
            raise ValueError("a rate event needs a value (0-10)")
        if self.timestamp is not None:
            if self.timestamp < 0:
                raise ValueError("timestamp must be epoch seconds")
            if self.timestamp > time.time() + 3600:
                raise ValueError("timestamp is in the future")
        return self


class EventBatch(RequestModel):
    events: list[EventIn] = Field(..., min_length=1, max_length=MAX_EVENTS)


class EventsAccepted(BaseModel):
    stored: int
    duplicates: int


class BookIn(RequestModel):
    """Catalogue fields of a book (create or update)."""

    title: str | None = Field(None, max_length=500)
    authors: str | None = Field(None, max_length=500)
    year: int | None = Field(None, ge=0, le=3000)
    publisher: str | None = Field(None, max_length=500)
    language: str | None = Field(None, max_length=32)
    tags: list[str] = Field(default_factory=list, max_length=100)
    cover_url: str | None = Field(None, max_length=2000)
    series: str | None = Field(None, max_length=500, description="with series_position")
    series_position: float | None = Field(
        None, ge=0, le=100_000, description="the volume's place in its series (1, 2, 2.5…)"
    )
    work_id: str | None = Field(
        None,
        max_length=300,
        description="editions of one work share it; derived from title and first author "
        "when absent",
    )

    @model_validator(mode="after")
    def _series_pair(self) -> BookIn:
        if (self.series is None) != (self.series_position is None):
            raise ValueError("series and series_position go together: give both or neither")
        return self


class BookCreate(BookIn):
    book_id: str = ID


class Book(BaseModel):
    book_id: str
    title: str | None = None
    authors: str | None = None
    year: int | None = None
    publisher: str | None = None
    language: str | None = None
    tags: list[str] = Field(default_factory=list)
    cover_url: str | None = None
    series: str | None = None
    series_position: float | None = None
    work_id: str | None = None


class BookList(BaseModel):
    books: list[Book]


class UserProfile(BaseModel):
    user_id: str
    in_model: bool = Field(description="the bundle has a history for this user")
    history_length: int
    events: int


class HistoryItem(BaseModel):
    book_id: str
    title: str | None
    source: Literal["bundle", "event"]
    type: str | None = None
    timestamp: float | None = None


class UserHistory(BaseModel):
    user_id: str
    history: list[HistoryItem]


class Erasure(BaseModel):
    user_id: str
    removed: dict[str, int]


class FeedbackIn(RequestModel):
    """A reaction to a served list: ``impression_id`` of the response it was in
    (``request_id`` is accepted as its former name)."""

    impression_id: str = Field(
        ...,
        min_length=1,
        max_length=128,
        pattern=PATH_ID_PATTERN,
        validation_alias=AliasChoices("impression_id", "request_id"),
        description="metadata.impression_id of the list reacted to",
    )
    user_id: str = ID
    book_id: str = ID
    type: Literal["click", "add_to_list", "purchase", "dismiss"] = "click"


class VariantStats(BaseModel):
    """Click-through of one variant: impressions with at least one click, Wilson 95%."""

    impressions: int
    clicked: int
    ctr: float
    ctr_95_low: float
    ctr_95_high: float
    diff_vs_control: float | None = None
    diff_95_low: float | None = None
    diff_95_high: float | None = None


class ExperimentStatus(BaseModel):
    name: str
    active: bool
    variants: dict[str, float] = Field(description="traffic share per variant, percent")
    settings: dict[str, dict[str, str]] = Field(description="bundle / pipeline per variant")
    results: dict[str, VariantStats] | None = Field(
        None, description="from the store's impressions and feedback; null without a store"
    )


class ExperimentsOverview(BaseModel):
    bundle_version: str = Field(description="the bundle everyone outside an experiment gets")
    experiments: list[ExperimentStatus]


class ModelsReload(BaseModel):
    family: str = Field(description="the bundle family this server follows in the registry")
    production: str | None = Field(description="the registry's production version, as applied")
    bundle_version: str = Field(description="the bundle everyone outside an experiment gets")
    switched: bool = Field(description="whether this call swapped the bundle")
    follow_error: str | None = Field(
        None, description="promote/rollback: the registry changed, but following it failed"
    )


class Session(BaseModel):
    """The caller of ``GET /auth/me``."""

    auth_enabled: bool
    subject: str | None = Field(description="the token's subject (a user id or a service)")
    scopes: list[str] = Field(description="what the token may do beyond acting for itself")


class VitalsPoint(BaseModel):
    """One interval of this process's traffic (``at``: its end, epoch seconds). Shares are
    None when the interval had nothing to divide by."""

    at: float
    rps: float = Field(description="API requests per second (not the console's own polling)")
    p50_ms: float | None
    p99_ms: float | None
    error_rate: float | None = Field(description="share of API answers that were 5xx")
    fallback_rate: float | None = Field(
        description="share of user lists popularity answered (fallback or unknown reader)"
    )
    cache_hit_ratio: float | None = Field(description="share of cache lookups answered")
    events_per_s: float


class VitalsOut(BaseModel):
    bundle_version: str
    every_s: float
    points: list[VitalsPoint]


class ModelVersionOut(BaseModel):
    version: str
    stage: str
    metrics: dict[str, float]
    parent: str | None
    created_at: float
    promoted_at: float | None
    actor: str
    reasons: list[str]


class ModelsOverview(BaseModel):
    family: str
    production: str | None = Field(description="the registry's production version")
    bundle_version: str = Field(description="what this server serves now")
    versions: list[ModelVersionOut] = Field(description="newest first")


class PromoteIn(RequestModel):
    version: str = ID
    reason: str = Field("", max_length=500)


class RollbackIn(RequestModel):
    reason: str = Field("", max_length=500)


class PreviewIn(RequestModel):
    limit: int = Field(10, ge=1, le=MAX_LIMIT)
    book_id: str | None = Field(
        None, min_length=1, max_length=200, description="say why this book is or is not listed"
    )
    filters: Filters | None = None


class PreviewBook(BaseModel):
    book_id: str
    title: str | None
    score: float
    reasoning: str


class PreviewCandidate(BaseModel):
    book_id: str
    title: str | None
    score: float = Field(description="the ranker's score")
    position: int | None = Field(description="place among the admissible candidates (1 = top)")
    listed: bool = Field(description="in the list the reader would see")
    admissible: bool = Field(description="not excluded by the request's filters or the catalogue")
    sources: dict[str, int] = Field(description="source -> rank in that source's list (1 = top)")
    features: dict[str, float]
    reasoning: str


class WhyNot(BaseModel):
    book_id: str
    title: str | None
    verdict: Literal[
        "listed",
        "already_read",
        "edition_read",
        "edition_listed",
        "earlier_volume_unread",
        "not_interested",
        "filtered",
        "not_a_candidate",
        "below_the_cut",
        "not_in_catalogue",
        "removed",
        "erased",
        "not_personal",
    ]
    detail: str


class Preview(BaseModel):
    user_id: str
    bundle_version: str = Field(description="the bundle of the reader's arm")
    experiment: str | None = None  # the active experiment (or canary) the reader is in
    variant: str | None = None
    status: Literal["personal", "unknown_user", "erased", "fallback"]
    source: str = Field(description="who would answer: personalized, or the fallback")
    fallback_reason: str | None = None
    history: list[HistoryItem] = Field(description="the reader's last books, most recent last")
    history_length: int
    served: list[PreviewBook]
    candidates: list[PreviewCandidate] = Field(description="every candidate, best first")
    why: WhyNot | None = None


class SeriesPoint(BaseModel):
    at: float = Field(description="start of the time bucket, epoch seconds")
    variant: str
    impressions: int
    clicked: int
    ctr: float
    ctr_95_low: float
    ctr_95_high: float


class ExperimentSeries(BaseModel):
    name: str
    bucket_s: int
    points: list[SeriesPoint] = Field(description="per bucket and variant, oldest first")


class Preference(BaseModel):
    book_id: str
    title: str | None
    type: Literal["not_interested", "dislike", "less_of_author"]
    at: float = Field(description="when the reader said so, epoch seconds")


class Preferences(BaseModel):
    """Books the reader does not want (left out of every personal list until withdrawn), and
    books whose author they want less of (that author's books down-weighted)."""

    user_id: str
    preferences: list[Preference]


class PreferencesWithdrawn(BaseModel):
    user_id: str
    removed: int = Field(description="marks withdrawn (events deleted)")


class FollowIn(RequestModel):
    """Whom to follow: their books join the reader's candidates ("friends are reading")."""

    followee_id: str = Field(min_length=1, max_length=200, pattern=PATH_ID_PATTERN)


class Followed(BaseModel):
    user_id: str = Field(description="the reader who follows")
    followee_id: str
    created: bool = Field(description="false when the reader already followed them")


class Followee(BaseModel):
    user_id: str
    since: float = Field(description="when the reader started following, epoch seconds")


class Follows(BaseModel):
    """Everyone the reader follows, oldest first."""

    user_id: str
    follows: list[Followee]


class Unfollowed(BaseModel):
    user_id: str
    followee_id: str
    removed: bool = Field(description="false when the reader did not follow them")


class RulesOut(BaseModel):
    file: str | None = Field(description="the watched rules file (null: none configured)")
    version: str = Field(description="changes with every file applied ('none' before any)")
    rules: dict[str, Any] = Field(description="the rules in force, as parsed")
    error: str | None = Field(
        description="why the file's latest version was refused (the rules in force stay)"
    )


class ReviewIn(RequestModel):
    """A reader's review of a book: one per reader and book; posting again replaces it."""

    user_id: str = ID
    rating: int = Field(..., ge=1, le=5, description="stars, 1-5 (stored as a rate event 2-10)")
    text: str = Field("", max_length=5000)


class Review(BaseModel):
    user_id: str
    book_id: str
    rating: int
    text: str
    created_at: float
    updated_at: float


class Reviews(BaseModel):
    book_id: str
    count: int = Field(description="reviews of the book")
    average_rating: float | None = Field(description="mean stars (null without reviews)")
    reviews: list[Review] = Field(description="the latest first")
