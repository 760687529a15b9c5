"""`recsys token`: a development JWT for a user or a service."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf


def main(cfg: DictConfig) -> str:
    from recsys.errors import RecsysError
    from recsys.serving.auth import ALL_SCOPES, Authenticator

    auth = Authenticator.from_config(OmegaConf.to_container(cfg.auth, resolve=True))  # type: ignore[arg-type]
    scopes = [str(s) for s in cfg.scopes]
    unknown = sorted(set(scopes) - set(ALL_SCOPES))
    if unknown:
        raise RecsysError(f"unknown scope(s) {unknown}; known: {list(ALL_SCOPES)}")
    token = auth.issue(str(cfg.sub), scopes, float(cfg.ttl_s))
    print(token)
    return token
