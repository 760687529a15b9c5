"""Test helpers (importable as tests.helpers)."""
