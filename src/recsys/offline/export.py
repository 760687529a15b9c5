"""Embedding export for other teams, and the validator they can trust.

Folder layout (format ``recsys-embeddings/1``)::

    books.parquet    book_id: string, vector: array<float32, dim>   (one row per book)
    users.parquet    user_id: string, vector: array<float32, dim>   (one row per known user)
    books.npy        float32 [n_books, dim], rows in books.parquet order      (optional)
    users.npy        float32 [n_users, dim], rows in users.parquet order      (optional)
    books.faiss      exact inner-product FAISS index over books.npy; search returns
                     row numbers of books.parquet                             (optional)
    manifest.json    bundle version, model, dim, metric, normalisation, temperature, vocabulary
                     checksums, created_at, row counts, sha256 of every file

Vectors are L2-normalised; the model's score of (user, book) is
``dot(user_vector, book_vector) / temperature`` — cosine similarity, so ranking by plain inner
product is the same ranking. User vectors are computed from every interaction known for the
user (training and validation), as served online.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from recsys.bundle.reader import Bundle
from recsys.checksums import sha256_file
from recsys.errors import RecsysError
from recsys.features.vocab import NUM_RESERVED
from recsys.stores import Stores

FORMAT = "recsys-embeddings/1"


def _frame(key: str, ids: list[str], vectors: np.ndarray) -> pl.DataFrame:
    dim = vectors.shape[1]
    return pl.DataFrame({key: ids, "vector": pl.Series(vectors, dtype=pl.Array(pl.Float32, dim))})


def known_histories(bundle: Bundle, stores: Stores | None = None) -> dict[str, list[str]]:
    """Every known user's history: the bundle's, then events from ``stores``; erased users
    left out."""
    histories: dict[str, list[str]] = {
        str(u): list(h) for u, h in bundle.known_histories.iter_rows()
    }
    if stores is None:
        return histories
    for user, books in stores.events.event_histories().items():
        histories[user] = list(dict.fromkeys([*histories.get(user, []), *books]))
    for user in stores.users.deleted_filter(histories):
        del histories[user]
    return histories


def user_vectors(
    bundle: Bundle, stores: Stores | None = None, batch_size: int = 4096
) -> tuple[list[str], np.ndarray]:
    """Vectors of every known user, from all of their known interactions."""
    retriever = bundle.recommender(use_index=False)
    histories = known_histories(bundle, stores)
    ids = list(histories)
    rows = [histories[u] for u in ids]
    out = np.zeros((len(ids), bundle.manifest.embedding_dim), dtype=np.float32)
    for start in range(0, len(ids), batch_size):
        chunk = slice(start, start + batch_size)
        users = np.array([bundle.state.users.encode_one(u) for u in ids[chunk]])
        matrix = bundle.history_matrix(rows[chunk])
        out[chunk] = retriever.encode(retriever.features_from_matrix(users, matrix))
    return ids, out


def export_embeddings(
    bundle: Bundle,
    out: str | Path,
    npy: bool = True,
    faiss_index: bool = True,
    stores: Stores | None = None,
) -> dict[str, Any]:
    """Write an export of ``bundle`` to ``out`` (atomically: built aside, then renamed).

    With the serving ``store``, user vectors include events since training and erased users
    are left out."""
    target = Path(out)
    if target.exists() and any(target.iterdir()):
        raise RecsysError(f"out={target} exists and is not empty; choose a new folder.")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    except OSError as exc:
        raise RecsysError(f"cannot write to out={target}: {exc.strerror}.") from None
    try:
        books = bundle.book_embeddings[NUM_RESERVED:].astype(np.float32)
        book_ids = [str(b) for b in bundle.state.books.ids.to_list()]
        user_ids, users = user_vectors(bundle, stores)
        files: dict[str, dict[str, Any]] = {}
        _frame("book_id", book_ids, books).write_parquet(staging / "books.parquet")
        _frame("user_id", user_ids, users).write_parquet(staging / "users.parquet")
        files["books.parquet"] = {"rows": len(book_ids)}
        files["users.parquet"] = {"rows": len(user_ids)}
        if npy:
            np.save(staging / "books.npy", books)
            np.save(staging / "users.npy", users)
            files["books.npy"] = {"rows": len(book_ids)}
            files["users.npy"] = {"rows": len(user_ids)}
        if faiss_index:
            import faiss

            index = faiss.IndexFlatIP(books.shape[1])
            index.add(books)
            faiss.write_index(index, str(staging / "books.faiss"))
            files["books.faiss"] = {"rows": int(index.ntotal)}
        for name, meta in files.items():
            meta["sha256"] = sha256_file(staging / name)
            meta["bytes"] = (staging / name).stat().st_size
        norms = np.linalg.norm(books, axis=1)
        manifest = {
            "format": FORMAT,
            "bundle_name": bundle.manifest.bundle_name,
            "bundle_version": bundle.version,
            "model": "two_tower",
            "dim": int(books.shape[1]),
            "metric": "inner_product",
            "normalised": bool(np.allclose(norms, 1.0, atol=1e-4)),
            "temperature": float(bundle.manifest.temperature),
            "score": "dot(user_vector, book_vector) / temperature",
            "book_vocab_sha256": bundle.state.books.checksum(),
            "user_vocab_sha256": bundle.state.users.checksum(),
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "rows": {"books": len(book_ids), "users": len(user_ids)},
            "files": files,
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2))
        if target.exists():
            target.rmdir()  # empty (checked above)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


class Export:
    """A validated export: vectors and ids, loaded on demand."""

    def __init__(self, folder: Path, manifest: dict[str, Any]) -> None:
        self.folder, self.manifest = folder, manifest

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    def books(self) -> tuple[list[str], np.ndarray]:
        return self._read("books.parquet", "book_id")

    def users(self) -> tuple[list[str], np.ndarray]:
        return self._read("users.parquet", "user_id")

    def _read(self, name: str, key: str) -> tuple[list[str], np.ndarray]:
        frame = pl.read_parquet(self.folder / name)
        return frame.get_column(key).to_list(), frame.get_column("vector").to_numpy()


def validate_export(folder: str | Path) -> Export:
    """Check an export: manifest, checksums, shapes, vector length, finite values, ids unique.

    Raises :class:`RecsysError` naming the first problem.
    """
    root = Path(folder)
    try:
        manifest = json.loads((root / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise RecsysError(f"{root}: no readable manifest.json ({exc}).") from None
    if manifest.get("format") != FORMAT:
        raise RecsysError(f"{root}: format {manifest.get('format')!r} is not {FORMAT!r}.")
    dim = int(manifest["dim"])
    for name, meta in manifest["files"].items():
        path = root / name
        if not path.is_file():
            raise RecsysError(f"{root}: {name} is missing.")
        if sha256_file(path) != meta["sha256"]:
            raise RecsysError(f"{root}: checksum mismatch for {name}; the export is corrupt.")
    export = Export(root, manifest)
    for kind, read in (("books", export.books), ("users", export.users)):
        ids, vectors = read()
        expected = int(manifest["rows"][kind])
        if vectors.shape != (expected, dim):
            raise RecsysError(
                f"{root}: {kind}.parquet has vectors {vectors.shape}, expected ({expected}, {dim})."
            )
        if not np.isfinite(vectors).all():
            raise RecsysError(f"{root}: {kind}.parquet has NaN or infinite values.")
        if len(set(ids)) != len(ids):
            raise RecsysError(f"{root}: {kind}.parquet has duplicate ids.")
        npy = root / f"{kind}.npy"
        if f"{kind}.npy" in manifest["files"] and not np.array_equal(np.load(npy), vectors):
            raise RecsysError(f"{root}: {kind}.npy does not match {kind}.parquet.")
    if "books.faiss" in manifest["files"]:
        import faiss

        index = faiss.read_index(str(root / "books.faiss"))
        if index.ntotal != int(manifest["rows"]["books"]) or index.d != dim:
            raise RecsysError(f"{root}: books.faiss does not match books.parquet.")
    return export
