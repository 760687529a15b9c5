"""Serving (extra `serve`): one FastAPI app; uvicorn runs it locally, Ray Serve scales it out."""
