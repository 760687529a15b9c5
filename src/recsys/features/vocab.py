"""Frozen id vocabularies: raw string id -> dense index, 0 = padding, 1 = unknown (OOV)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import polars as pl

PAD = 0
OOV = 1
NUM_RESERVED = 2
SMALL = 256  # encode() uses a dict lookup up to this many ids


class IdVocab:
    """An immutable map from raw ids to indices ``2..size-1``; unknown ids map to ``OOV``.

    Ids are ordered by their first appearance in the (sorted) fitting data, so fitting the same
    ids always gives the same vocabulary. Saved as parquet (no pickle).
    """

    def __init__(self, ids: pl.Series) -> None:
        ids = ids.cast(pl.String)
        if ids.null_count():
            raise ValueError("vocabulary ids must not be null")
        if ids.n_unique() != ids.len():
            raise ValueError("vocabulary ids must be unique")
        self._ids = ids.rename("id")
        self._frame = pl.DataFrame(
            {"id": self._ids, "index": np.arange(NUM_RESERVED, NUM_RESERVED + ids.len())}
        )
        self._lookup: dict[str, int] | None = None

    @classmethod
    def fit(cls, ids: pl.Series) -> IdVocab:
        """Build a vocabulary from raw ids (duplicates allowed), sorted for determinism."""
        return cls(ids.cast(pl.String).drop_nulls().unique().sort())

    @property
    def size(self) -> int:
        """Number of rows an embedding table needs (reserved indices included)."""
        return self._ids.len() + NUM_RESERVED

    @property
    def ids(self) -> pl.Series:
        """Known raw ids in index order (index of ``ids[i]`` is ``i + 2``)."""
        return self._ids

    def __len__(self) -> int:
        return self._ids.len()

    def __contains__(self, raw_id: object) -> bool:
        return str(raw_id) in self.lookup

    @property
    def lookup(self) -> dict[str, int]:
        """A Python dict for single-id lookups on hot paths (built once)."""
        if self._lookup is None:
            self._lookup = dict(
                zip(self._ids.to_list(), range(NUM_RESERVED, self.size), strict=True)
            )
        return self._lookup

    def encode(self, ids: pl.Series) -> np.ndarray:
        """Map raw ids to indices, unknown ids to ``OOV``. Returns int64 ``[n]``.

        Short inputs (single requests) use the dict; long ones a polars join. Both give the
        same answer (tested).
        """
        if ids.len() <= SMALL:
            lookup = self.lookup
            return np.fromiter(
                (
                    lookup.get(i, OOV) if i is not None else OOV
                    for i in ids.cast(pl.String).to_list()
                ),
                dtype=np.int64,
                count=ids.len(),
            )
        frame = pl.DataFrame({"id": ids.cast(pl.String)})
        joined = frame.join(self._frame, on="id", how="left", maintain_order="left")
        return joined.get_column("index").fill_null(OOV).to_numpy().astype(np.int64)

    def encode_one(self, raw_id: object) -> int:
        """Index of one raw id (``OOV`` if unknown)."""
        return self.lookup.get(str(raw_id), OOV)

    def decode(self, indices: np.ndarray) -> list[str | None]:
        """Raw ids of indices; reserved indices decode to None."""
        idx = np.asarray(indices, dtype=np.int64) - NUM_RESERVED
        ids = self._ids.to_list()
        return [ids[i] if 0 <= i < len(ids) else None for i in idx.tolist()]

    def checksum(self) -> str:
        """sha256 of the ids in order: identifies the vocabulary across files."""
        digest = hashlib.sha256()
        for raw in self._ids.to_list():
            digest.update(raw.encode("utf-8") + b"\n")
        return digest.hexdigest()

    def save(self, path: str | Path) -> None:
        self._frame.write_parquet(path)

    @classmethod
    def load(cls, path: str | Path) -> IdVocab:
        frame = pl.read_parquet(path).sort("index")
        expected = np.arange(NUM_RESERVED, NUM_RESERVED + frame.height)
        if not np.array_equal(frame.get_column("index").to_numpy(), expected):
            raise ValueError(f"{path}: vocabulary indices are not contiguous from 2")
        return cls(frame.get_column("id"))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IdVocab) and self._ids.equals(other._ids)

    def __hash__(self) -> int:
        return hash(self.checksum())
