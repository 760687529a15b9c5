"""Request and response models (validated at the ingress; documented in OpenAPI)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_LIMIT = 50
MAX_LIST = 200


class Filters(BaseModel):
    """Optional constraints on recommended books."""

    model_config = ConfigDict(extra="forbid")

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


class RecommendRequest(BaseModel):
    """Body of POST /recommendations/users/{user_id}."""

    model_config = ConfigDict(extra="forbid")

    limit: int = Field(10, ge=1, le=MAX_LIMIT)
    exclude: list[str] = Field(default_factory=list, max_length=MAX_LIST)
    filters: Filters | None = None


class SimilarRequest(BaseModel):
    """Body of POST /recommendations/books/{book_id}."""

    model_config = ConfigDict(extra="forbid")

    limit: int = Field(10, ge=1, le=MAX_LIMIT)
    filters: Filters | None = None


class UserContext(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: str | None = Field(None, max_length=200)
    preferences: list[str] = Field(default_factory=list, max_length=MAX_LIST)


class SimilarBooksV2Request(BaseModel):
    """Body of POST /v2/recommendations/similar-books."""

    model_config = ConfigDict(extra="forbid")

    book_id: str = Field(..., min_length=1, max_length=200)
    limit: int = Field(10, ge=1, le=MAX_LIMIT)
    user_context: UserContext | None = None


class HybridRequest(BaseModel):
    """Body of POST /recommendations/hybrid: any mix of a known user, an anonymous history and
    seed books."""

    model_config = ConfigDict(extra="forbid")

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


class Metadata(BaseModel):
    source: Source
    bundle_version: str
    latency_ms: float
    request_id: str
    fallback_reason: str | None = None


class RecommendationResponse(BaseModel):
    recommendations: list[Recommendation]
    metadata: Metadata
