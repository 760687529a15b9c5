"""Baselines from well-kept libraries (optional extra `bench`)."""
