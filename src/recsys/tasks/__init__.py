"""Losses, kept separate from architecture."""
