"""Ranking metrics over full-catalogue top-K lists."""
