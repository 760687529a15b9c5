"""Synthetic book data with planted structure, in the canonical schema, at any size.

Planted structure, so that tests can check that models really learn:
- every book has one genre (its first tag) and one author; authors write in one genre;
- some books form series (same author, consecutive volumes) and readers of a volume tend to
  read the next one shortly after;
- popularity inside a genre follows a power law (Zipf), so popularity is a real but weak
  baseline;
- each user belongs to a taste cluster (a primary and a secondary genre): most of their reading
  is from those genres, a little is noise; age correlates with the cluster;
- interactions carry increasing timestamps per user.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from recsys.data.io import Dataset, build_dataset

GENRES = (
    "fantasy",
    "mystery",
    "romance",
    "science-fiction",
    "history",
    "biography",
    "horror",
    "poetry",
    "cooking",
    "travel",
    "philosophy",
    "children",
    "thriller",
    "classics",
    "business",
    "self-help",
    "graphic-novel",
    "religion",
    "art",
    "science",
)
COUNTRIES = ("usa", "uk", "canada", "germany", "spain", "france", "australia", "india")
WORDS = (
    "Shadow",
    "River",
    "Crown",
    "Garden",
    "Storm",
    "Letter",
    "Silence",
    "Empire",
    "Night",
    "Harbor",
    "Mirror",
    "Winter",
    "Road",
    "Secret",
    "Fire",
    "Island",
)


@dataclass(frozen=True)
class SyntheticConfig:
    """Size and strength of the planted structure."""

    n_users: int = 2000
    n_books: int = 1000
    n_genres: int = 8
    authors_per_genre: int = 10
    mean_history: float = 20.0
    min_history: int = 5
    purity: float = 0.8
    noise: float = 0.05
    zipf_exponent: float = 1.0
    series_fraction: float = 0.3
    next_volume_prob: float = 0.5
    editions_fraction: float = 0.03  # books that are another edition of an earlier book
    start_ts: int = 1_600_000_000
    seed: int = 0


def generate(config: SyntheticConfig | None = None, **overrides: object) -> Dataset:
    """Generate a synthetic dataset (deterministic for a given config)."""
    cfg = config or SyntheticConfig()
    if overrides:
        cfg = SyntheticConfig(**{**cfg.__dict__, **overrides})
    if not 1 <= cfg.n_genres <= len(GENRES):
        raise ValueError(f"n_genres must be in 1..{len(GENRES)}")
    rng = np.random.default_rng(cfg.seed)
    books, genre, _, next_volume, pop = _books(cfg, rng)
    users, primary, secondary = _users(cfg, rng)
    inter = _interactions(cfg, rng, genre, pop, primary, secondary, next_volume)
    return build_dataset("synthetic", inter, books, users, source="synthetic")


def _books(
    cfg: SyntheticConfig, rng: np.random.Generator
) -> tuple[pl.DataFrame, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    n = cfg.n_books
    genre = np.arange(n) % cfg.n_genres
    rng.shuffle(genre)
    author = genre * cfg.authors_per_genre + rng.integers(0, cfg.authors_per_genre, n)
    # Popularity: Zipf over a random order of the books inside each genre.
    pop = np.empty(n)
    for g in range(cfg.n_genres):
        members = np.flatnonzero(genre == g)
        ranks = rng.permutation(len(members)) + 1
        pop[members] = ranks ** (-cfg.zipf_exponent)
    # Series: consecutive volumes by the same author.
    next_volume = np.full(n, -1)
    series_name: list[str | None] = [None] * n
    volume = np.zeros(n, dtype=np.int64)
    for a in np.unique(author):
        members = np.flatnonzero(author == a)
        k = round(len(members) * cfg.series_fraction)
        if k >= 2:
            chosen = members[:k]
            next_volume[chosen[:-1]] = chosen[1:]
            volume[chosen] = np.arange(1, k + 1)
            for b in chosen:
                series_name[b] = f"Saga of {WORDS[a % len(WORDS)]} {a}"
    base_year = 1950 + (np.arange(cfg.n_genres) * 7) % 60
    year = base_year[genre] + rng.integers(0, 20, n)
    titles = [
        f"{series_name[b]} #{volume[b]}"
        if series_name[b]
        else f"The {WORDS[rng.integers(len(WORDS))]} of {GENRES[genre[b]].title()} {b}"
        for b in range(n)
    ]
    language = np.where(rng.random(n) < 0.9, "eng", "spa")
    work = _editions(cfg, author, series_name, titles, language)
    frame = pl.DataFrame(
        {
            "book_id": [f"b{b}" for b in range(n)],
            "title": titles,
            "authors": [f"Author {a}" for a in author],
            "year": year.astype(np.int32),
            "publisher": [
                f"{GENRES[g].title()} House {a % 3}" for g, a in zip(genre, author, strict=True)
            ],
            "language": language,
            "tags": [
                [GENRES[g], f"{GENRES[g]}-{a % 4}"] for g, a in zip(genre, author, strict=True)
            ],
            "image_url": [None] * n,
            "isbn": [f"{9780000000000 + b}" for b in range(n)],
            "series": series_name,
            "series_position": [float(volume[b]) if series_name[b] else None for b in range(n)],
            "work_id": [f"w{w}" for w in work],
        },
        schema_overrides={"image_url": pl.String, "series": pl.String},
    )
    return frame, genre, author, next_volume, pop


def _editions(
    cfg: SyntheticConfig,
    author: np.ndarray,
    series_name: list[str | None],
    titles: list[str],
    language: np.ndarray,
) -> np.ndarray:
    """Make ``editions_fraction`` of the books outside series a Spanish edition of an earlier
    book by the same author (its title, "(Spanish Edition)", one work); returns each book's
    work. Drawn from a stream of its own, so the rest of the data does not change with it."""
    n = len(titles)
    work = np.arange(n)
    rng = np.random.default_rng(cfg.seed + 7919)
    single = np.array([name is None for name in series_name])
    for b in np.flatnonzero(single & (rng.random(n) < cfg.editions_fraction)):
        earlier = np.flatnonzero(
            single[:b] & (author[:b] == author[b]) & (work[:b] == np.arange(b))
        )
        if earlier.size == 0:
            continue
        original = int(earlier[rng.integers(earlier.size)])
        work[b] = original
        titles[b] = f"{titles[original]} (Spanish Edition)"
        language[b] = "spa"
    return work


def _users(
    cfg: SyntheticConfig, rng: np.random.Generator
) -> tuple[pl.DataFrame, np.ndarray, np.ndarray]:
    n = cfg.n_users
    primary = rng.integers(0, cfg.n_genres, n)
    shift = rng.integers(1, max(cfg.n_genres, 2), n)
    secondary = (primary + shift) % cfg.n_genres
    age = np.clip(18 + primary * 5 + rng.normal(0, 6, n), 13, 90).astype(np.int32)
    country = np.array(COUNTRIES)[rng.integers(0, len(COUNTRIES), n)]
    frame = pl.DataFrame({"user_id": [f"u{u}" for u in range(n)], "age": age, "country": country})
    return frame, primary, secondary


def _interactions(
    cfg: SyntheticConfig,
    rng: np.random.Generator,
    genre: np.ndarray,
    pop: np.ndarray,
    primary: np.ndarray,
    secondary: np.ndarray,
    next_volume: np.ndarray,
) -> pl.DataFrame:
    lengths = cfg.min_history + rng.poisson(max(cfg.mean_history - cfg.min_history, 0), cfg.n_users)
    user = np.repeat(np.arange(cfg.n_users), lengths)
    draw = rng.random(user.size)
    chosen_genre = np.where(
        draw < cfg.purity,
        primary[user],
        np.where(draw < 1 - cfg.noise, secondary[user], rng.integers(0, cfg.n_genres, user.size)),
    )
    book = np.empty(user.size, dtype=np.int64)
    for g in range(cfg.n_genres):
        rows = np.flatnonzero(chosen_genre == g)
        members = np.flatnonzero(genre == g)
        cum = np.cumsum(pop[members])
        picks = np.searchsorted(cum, rng.random(rows.size) * cum[-1])
        book[rows] = members[np.minimum(picks, members.size - 1)]
    gaps = rng.exponential(2 * 86_400, user.size).astype(np.int64) + 60
    start = cfg.start_ts + rng.integers(0, 300 * 86_400, cfg.n_users)
    ts = start[user] + _cumsum_by_group(gaps, lengths)
    # Series: a reader of a volume often reads the next one soon after.
    follow = (next_volume[book] >= 0) & (rng.random(user.size) < cfg.next_volume_prob)
    user = np.concatenate([user, user[follow]])
    ts = np.concatenate([ts, ts[follow] + 3_600])
    book = np.concatenate([book, next_volume[book[follow]]])
    return (
        pl.DataFrame(
            {
                "user_id": [f"u{u}" for u in user],
                "book_id": [f"b{b}" for b in book],
                "weight": np.ones(user.size, dtype=np.float32),
                "timestamp": ts,
            }
        )
        .unique(["user_id", "book_id"], keep="first")
        .sort(["user_id", "timestamp"])
    )


def _cumsum_by_group(values: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    total = np.cumsum(values)
    offsets = np.repeat(np.concatenate([[0], total[np.cumsum(lengths)[:-1] - 1]]), lengths)
    return total - offsets
