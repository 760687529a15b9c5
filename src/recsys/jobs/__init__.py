"""Job functions that take a Hydra DictConfig; the only package that imports hydra/omegaconf.

Importing it registers the typed serving defaults with Hydra's ConfigStore, so the ``serve``
and ``auth`` configs are composed on top of :mod:`recsys.serving.settings` (defaults written
once) and name only what depends on paths.
"""

from hydra.core.config_store import ConfigStore

from recsys.serving.settings import AuthSettings, ServeSettings


def register_settings() -> None:
    """``serve_schema`` (every serving default but auth) and ``auth/schema``."""
    store = ConfigStore.instance()
    serve = ServeSettings.defaults()
    serve.pop("auth")  # the auth group: shared with `recsys token`
    store.store(name="serve_schema", node=serve)
    store.store(group="auth", name="schema", node=AuthSettings().model_dump(mode="json"))


register_settings()
