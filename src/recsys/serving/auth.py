"""JWT bearer authentication and the access rules of the API.

Tokens: ``sub`` (a user id, or a service name), ``exp``, optional ``scope`` (space-separated).
A token acts for its own ``sub``; scopes ending in ``:any`` let a service or partner act for any
user:

=====================  ==========================================================
scope                  allows
=====================  ==========================================================
``recs:read:any``      recommendations of any user
``events:write:any``   events and feedback for any user
``users:read:any``     profiles and histories of any user
``users:delete:any``   erasure of any user
``catalogue:write``    create, change and delete books
``experiments:read``   the experiments and their click-through
``models:write``       promote, roll back and reload model versions
``ops:read``           the console's views: model versions, service health
=====================  ==========================================================

HS256 with a shared secret by default (``auth.secret``, else ``RECSYS_JWT_SECRET``, else a
random key created once in ``auth.secret_file``); RS256 with ``auth.public_key_file`` (tokens
are then issued elsewhere). Missing, expired or forged tokens are 401; a valid token without
the right to act is 403. Health, readiness, metrics, docs, trending, similar books and catalogue
reads stay public. ``auth.enabled=false`` turns all of it off (an explicit choice).
"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt

from recsys.errors import RecsysError

SCOPES = ("recs:read:any", "events:write:any", "users:read:any", "users:delete:any")
CATALOGUE_WRITE = "catalogue:write"
EXPERIMENTS_READ = "experiments:read"
MODELS_WRITE = "models:write"
OPS_READ = "ops:read"
ALL_SCOPES = (*SCOPES, CATALOGUE_WRITE, EXPERIMENTS_READ, MODELS_WRITE, OPS_READ)


class Unauthorized(RecsysError):
    """HTTP 401: no valid token."""


class Forbidden(RecsysError):
    """HTTP 403: a valid token without the right to act."""


@dataclass(frozen=True)
class Principal:
    subject: str
    scopes: frozenset[str] = field(default_factory=frozenset)

    def may_act_for(self, user_id: str, scope: str) -> bool:
        return self.subject == user_id or scope in self.scopes


ANONYMOUS_OFF = Principal("auth-disabled", frozenset(ALL_SCOPES))


class Authenticator:
    """Verifies bearer tokens; issues HS256 tokens (development and tests)."""

    def __init__(
        self,
        enabled: bool = True,
        algorithm: str = "HS256",
        secret: str | None = None,
        secret_file: str | None = None,
        public_key_file: str | None = None,
        issuer: str = "recsys",
        audience: str = "recsys-api",
        leeway_s: float = 30.0,
    ) -> None:
        self.enabled, self.algorithm = enabled, algorithm
        self.issuer, self.audience, self.leeway_s = issuer, audience, leeway_s
        self.signing_key: str | None = None
        if algorithm == "HS256":
            if secret:
                self.key: Any = check_key(secret, "auth.secret")
            elif os.environ.get("RECSYS_JWT_SECRET"):
                self.key = check_key(os.environ["RECSYS_JWT_SECRET"], "$RECSYS_JWT_SECRET")
            else:
                self.key = _secret(secret_file)
            self.signing_key = self.key
        elif algorithm == "RS256":
            if not public_key_file:
                raise RecsysError("auth.algorithm=RS256 needs auth.public_key_file (PEM).")
            try:
                self.key = Path(public_key_file).read_text()
            except OSError as exc:
                raise RecsysError(f"cannot read auth.public_key_file: {exc.strerror}") from None
        else:
            raise RecsysError(f"auth.algorithm={algorithm}: use HS256 or RS256.")

    @classmethod
    def from_config(cls, cfg: dict[str, Any] | None) -> Authenticator:
        cfg = dict(cfg or {})
        return cls(
            enabled=bool(cfg.get("enabled", True)),
            algorithm=str(cfg.get("algorithm", "HS256")),
            secret=cfg.get("secret"),
            secret_file=cfg.get("secret_file"),
            public_key_file=cfg.get("public_key_file"),
            issuer=str(cfg.get("issuer", "recsys")),
            audience=str(cfg.get("audience", "recsys-api")),
            leeway_s=float(cfg.get("leeway_s", 30)),
        )

    def issue(self, subject: str, scopes: list[str] | None = None, ttl_s: float = 3600) -> str:
        if self.signing_key is None:
            raise RecsysError("this server verifies RS256 tokens; issue them with the private key.")
        now = int(time.time())
        claims: dict[str, Any] = {
            "sub": subject,
            "iat": now,
            "exp": now + int(ttl_s),
            "iss": self.issuer,
            "aud": self.audience,
        }
        if scopes:
            claims["scope"] = " ".join(scopes)
        return jwt.encode(claims, self.signing_key, algorithm=self.algorithm)

    def principal(self, authorization: str | None) -> Principal | None:
        """The caller of a request (None: no token). Raises Unauthorized on a bad token."""
        if not self.enabled:
            return ANONYMOUS_OFF
        if not authorization:
            return None
        kind, _, token = authorization.partition(" ")
        if kind.lower() != "bearer" or not token:
            raise Unauthorized("the Authorization header must be 'Bearer <token>'")
        try:
            claims = jwt.decode(
                token,
                self.key,
                algorithms=[self.algorithm],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_s,
                options={"require": ["exp", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("the token has expired") from None
        except jwt.InvalidTokenError as exc:
            raise Unauthorized(f"invalid token: {exc}") from None
        scopes = frozenset(str(claims.get("scope", "")).split())
        return Principal(str(claims["sub"]), scopes)

    def require(self, principal: Principal | None) -> Principal:
        if principal is None:
            raise Unauthorized("this endpoint needs a bearer token")
        return principal

    def require_user(self, principal: Principal | None, user_id: str, scope: str) -> Principal:
        """A token that may act for ``user_id`` (its own, or ``scope``)."""
        who = self.require(principal)
        if not who.may_act_for(user_id, scope):
            raise Forbidden(f"this token may not act for user '{user_id}' (needs scope {scope})")
        return who

    def require_scope(self, principal: Principal | None, scope: str) -> Principal:
        who = self.require(principal)
        if scope not in who.scopes:
            raise Forbidden(f"this token lacks scope {scope}")
        return who


MIN_KEY_BYTES = 32  # RFC 7518 §3.2: an HS256 key at least as long as the hash


def check_key(key: str, source: str) -> str:
    """``key``, if long enough for HS256; a RecsysError naming ``source`` and the fix."""
    if len(key.encode()) < MIN_KEY_BYTES:
        raise RecsysError(
            f"the HS256 key from {source} is {len(key.encode())} bytes; it needs at least "
            f"{MIN_KEY_BYTES}. Write a new one, e.g. `python -c 'import secrets; "
            "print(secrets.token_urlsafe(32))'`."
        )
    return key


def _secret(path: str | None) -> str:
    """A random HS256 key kept in ``path`` (created once, mode 0600).

    Replicas starting together race to create it: each writes its own candidate under a
    unique name and links it into place, which only the first can do; all then read the
    file, so every replica holds the same, complete key.
    """
    if not path:
        return secrets.token_urlsafe(32)  # per process: only this process can issue tokens
    file = Path(path)
    if not file.exists():
        file.parent.mkdir(parents=True, exist_ok=True)
        candidate = file.with_name(f".{file.name}.{os.getpid()}.{secrets.token_hex(4)}")
        descriptor = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_urlsafe(32))
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(candidate, file)  # atomic; fails when another process won the race
        except FileExistsError:
            pass
        finally:
            candidate.unlink()
    try:
        return check_key(file.read_text().strip(), f"auth.secret_file {file}")
    except OSError as exc:
        raise RecsysError(f"cannot read auth.secret_file {file}: {exc.strerror}") from None
