"""Inference: plain-Python recommenders every server and batch job calls (no Ray, no Lightning)."""
