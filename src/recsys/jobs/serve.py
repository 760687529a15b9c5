"""`recsys serve`: the FastAPI app in one uvicorn process (the embedded default)."""

from __future__ import annotations

from omegaconf import DictConfig


def main(cfg: DictConfig) -> None:
    import uvicorn

    from recsys.bundle.reader import load_bundle
    from recsys.serving.app import configure_logging, create_app
    from recsys.serving.service import RecommendationService

    bundle = load_bundle(cfg.bundle)  # fail fast, with the bundle's own error message
    configure_logging()
    app = create_app(lambda: RecommendationService(bundle, float(cfg.stage_timeout_ms) / 1000))
    print(f"serving bundle {bundle.version} on http://{cfg.host}:{cfg.port} (docs at /docs)")
    uvicorn.run(app, host=str(cfg.host), port=int(cfg.port), log_level="warning")
