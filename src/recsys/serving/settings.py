"""Serving settings: the one place serving defaults are written.

Every runner reads these models: `recsys serve` (its Hydra config is composed on top of
:meth:`ServeSettings.defaults`, registered by :mod:`recsys.runner`), the Ray Serve application
builder (:class:`recsys.serving.ray_app.RayAppArgs` takes a :class:`LiveSettings`) and
``serving/config.yaml`` (which names only what differs from these defaults).
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from recsys.errors import RecsysError
from recsys.stores.schema import HISTORY_EVENT_TYPES

M = TypeVar("M", bound=BaseModel)

STAGE_TIMEOUT_MS = 100.0  # the personalised path's budget before popularity answers
EventType = Literal["view", "rate", "want_to_read", "read", "purchase"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StoreSettings(_Section):
    """Events, catalogue edits, user profiles, erasure; ``url: null`` serves the bundle alone."""

    url: str | None = Field(default=None, description="sqlite:///… or postgresql+psycopg://…")
    history_types: list[EventType] = Field(
        default_factory=lambda: list(HISTORY_EVENT_TYPES),  # type: ignore[arg-type]
        description="events that count as reading",
    )

    @field_validator("history_types", mode="before")
    @classmethod
    def null_is_all(cls, value: Any) -> Any:
        return list(HISTORY_EVENT_TYPES) if value is None else value


class TrendingSettings(_Section):
    half_life_hours: float = Field(default=6.0, gt=0)
    window_days: float = Field(default=7.0, gt=0)
    refresh_s: float = Field(default=10.0, ge=0, description="rebuild from the store this often")


class CacheSettings(_Section):
    enabled: bool = True
    ttl_s: float = Field(default=3600.0, gt=0, description="the design's 1 h")
    l1_ttl_s: float = Field(default=10.0, ge=0, description="in-process level when Redis is on")
    max_users: int = Field(default=100_000, ge=1)
    redis_url: str | None = Field(default=None, description="redis://… adds the shared level 2")
    warm_users: int = Field(
        default=1000,
        ge=0,
        description="after start-up and each bundle swap, the default lists of this many of "
        "the most active readers are computed in the background and cached (0: off)",
    )
    warm_seconds: float = Field(default=10.0, gt=0, description="time bound of one warm-up")


class AuthSettings(_Section):
    """JWT bearer tokens (:mod:`recsys.serving.auth`); ``enabled: false`` turns checks off."""

    enabled: bool = True
    algorithm: Literal["HS256", "RS256"] = "HS256"
    secret: str | None = Field(default=None, description="HS256 key; else $RECSYS_JWT_SECRET")
    secret_file: str | None = Field(
        default=None, description="HS256 key file, created when missing"
    )
    public_key_file: str | None = Field(default=None, description="RS256: PEM of the issuer's key")
    issuer: str = "recsys"
    audience: str = "recsys-api"
    leeway_s: float = Field(default=30.0, ge=0)


class RateLimitSettings(_Section):
    """Per caller (token subject, else address) and endpoint."""

    enabled: bool = True
    default: str = Field(default="1000/minute", description="the design's per-user budget")
    endpoints: dict[str, str] = Field(default_factory=dict, description="{/events: 6000/minute}")
    redis_url: str | None = Field(default=None, description="shared by replicas when set")


class ExperimentSettings(_Section):
    file: str | None = Field(default=None, description="watched YAML of A/B experiments")
    poll_s: float = Field(default=1.0, gt=0)


class ExplorationSettings(_Section):
    """Slots for books with few reads (docs/serving.md, "Exploration")."""

    share: float = Field(
        default=0.0,
        ge=0,
        le=0.5,
        description="share of a user list's slots (0: off; `recsys serve` sets 0.1)",
    )
    max_reads: int = Field(
        default=5, ge=0, description="books read by at most this many readers count as new"
    )
    temperature: float = Field(
        default=1.0, gt=0, description="softmax temperature over the two-tower's scores"
    )


class RulesSettings(_Section):
    file: str | None = Field(
        default=None, description="watched YAML of business rules (recsys.serving.rules)"
    )
    poll_s: float = Field(default=1.0, gt=0)


class RegistrySettings(_Section):
    """Follow the model registry's production version (docs/operations.md, "Model registry
    and promotion"); ``url: null`` (the default) serves the configured bundle only."""

    url: str | None = Field(default=None, description="sqlite:///…/registry.db or postgresql…")
    poll_s: float = Field(default=2.0, gt=0, description="read the production pointer this often")
    family: str | None = Field(
        default=None, description="the family to follow (null: the served bundle's)"
    )


class MonitoringSettings(_Section):
    """Business and drift metrics (docs/operations.md, "Monitoring and alerts")."""

    coverage_window_s: float = Field(
        default=3600.0, gt=0, description="catalogue coverage counts books served this recently"
    )
    drift_window: int = Field(default=2000, ge=1, description="live values kept per signal")
    drift_min_samples: int = Field(
        default=200, ge=1, description="live values a drift signal needs before it is exported"
    )


class LiveSettings(_Section):
    """Everything a serving process keeps beyond the bundle (see :class:`Live`)."""

    store: StoreSettings = Field(default_factory=StoreSettings)
    trending: TrendingSettings = Field(default_factory=TrendingSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    rate_limits: RateLimitSettings | None = Field(
        default=None, description="none unless configured (`recsys serve` configures them)"
    )
    max_body_bytes: int = Field(default=1_000_000, ge=1, description="larger bodies get 413")
    experiments: ExperimentSettings = Field(default_factory=ExperimentSettings)
    rules: RulesSettings = Field(default_factory=RulesSettings)
    exploration: ExplorationSettings = Field(default_factory=ExplorationSettings)
    monitoring: MonitoringSettings = Field(default_factory=MonitoringSettings)
    registry: RegistrySettings = Field(default_factory=RegistrySettings)

    @field_validator(
        "store",
        "trending",
        "cache",
        "auth",
        "experiments",
        "rules",
        "exploration",
        "monitoring",
        "registry",
        mode="before",
    )
    @classmethod
    def null_is_default(cls, value: Any) -> Any:
        return {} if value is None else value  # `store: null` = a section left at defaults


class RaySettings(_Section):
    config: str = Field(default="serving/config.yaml", description="the Serve config file")
    address: str | None = Field(default=None, description="an existing cluster; null starts one")
    topology: Literal["fused", "chained"] | None = Field(
        default=None, description="null keeps the Serve config's choice"
    )
    num_cpus: int | None = None
    haproxy: bool | None = Field(
        default=None,
        description="a local Ray with Serve's HAProxy ingress (its high-throughput mode): "
        "about twice the throughput, and a request whose replica dies mid-answer is replayed "
        "on another. null: on where the haproxy binary is installed, else off with a log "
        "line; true: required; false: off",
    )


class ServeSettings(LiveSettings):
    """`recsys serve`: which bundle, where, on which runner, and the live sections."""

    engine: Literal["local", "ray"] = "local"
    bundle: str = "artifacts/bundles/synthetic"
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    stage_timeout_ms: float = Field(default=STAGE_TIMEOUT_MS, gt=0)
    forwarded_allow_ips: str = Field(
        default="", description="proxies whose X-Forwarded-For is believed (comma list; '*')"
    )
    workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="engine=local: server processes sharing the port (uvicorn workers, each "
        "with the bundle loaded; a worker that dies is replaced). Over 1, the response cache "
        "and the rate limits must be shared (cache.redis_url) or off",
    )
    ray: RaySettings = Field(default_factory=RaySettings)
    # a served config limits every caller by default (the design's per-user budget)
    rate_limits: RateLimitSettings | None = Field(default_factory=RateLimitSettings)
    # and explores: a tenth of each user list for new books (the library's default is off)
    exploration: ExplorationSettings = Field(default_factory=lambda: ExplorationSettings(share=0.1))

    def live(self) -> LiveSettings:
        """The live sections alone (what the Ray application's replicas receive)."""
        return LiveSettings.model_validate(self.model_dump(include=set(LiveSettings.model_fields)))

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Every default as plain data (the base of the Hydra ``serve`` config)."""
        return cls().model_dump(mode="json")


def validated(model: type[M], raw: dict[Any, Any], what: str) -> M:
    """``raw`` as ``model``; a bad value is one line naming the key (``bad <what> cache.ttl_s:
    Input should be greater than 0``), not a pydantic report."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise RecsysError(f"bad {what} {where}: {first['msg']}") from None
