"""Data layer: canonical schema, readers, splits, synthetic data (polars only)."""
