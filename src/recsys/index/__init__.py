"""Approximate nearest-neighbour search over book embeddings (FAISS)."""
