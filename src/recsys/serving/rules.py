"""Business rules on the served lists, from a watched YAML file (`rules.file`; edits
apply without a restart, a wrong file is refused whole and the rules before it keep serving)::

    filters:                          # named book filters, used by the rules below
      spanish: {languages: [spa]}
      recent: {year_min: 2015}
      in_stock: {book_ids_file: stock.txt}   # one id per line (relative to this file)
      sagas: {in_series: true}
    require: [in_stock]               # every list keeps to these filters
    hidden: [b7, b9]                  # never recommended
    expires: {b12: "2026-12-24T00:00:00Z"}   # recommended until then
    boosts:                           # a matching book's score x factor (model: its odds)
      - {name: recent-first, filter: recent, factor: 1.5}
    promotions:                       # a share of each list's slots
      - {name: spanish-share, filter: spanish, at_least: 0.2}
      - {name: fewer-sagas, filter: sagas, at_most: 0.3}
    pins:                             # a book in a fixed slot (1 = first), until a time
      - {name: staff-pick, book_id: b40, slot: 1, until: "2027-01-01T00:00:00Z",
         reason: "picked by our booksellers"}
    diversity: {max_per_author: 2, max_per_series: 1}

Filter fields (all given must hold): ``languages``, ``authors`` (substring, any),
``year_min``, ``year_max``, ``book_ids``, ``book_ids_file``, ``in_series``.

Order on a list: ``require``, ``hidden`` and ``expires`` leave books out (with the request's
filters, so the popularity top-up keeps to them too); boosts rescore; reading order
(:mod:`recsys.serving.reading_order`) walks the ranked books; diversity caps and ``at_most``
shares skip books; ``at_least`` shares bring in the best-ranked matching books in place of
the last non-matching ones; pins take their slots. The response's ``metadata.rules`` names
each rule that changed the list, and ``require`` filters always.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from recsys.errors import RecsysError
from recsys.features.vocab import NUM_RESERVED
from recsys.serving.reading_order import Pick

log = logging.getLogger(__name__)
NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class RulesError(RecsysError):
    """A rules file that cannot be applied (the rules before it stay)."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BookFilter(_Model):
    languages: list[str] | None = None
    authors: list[str] | None = None
    year_min: int | None = None
    year_max: int | None = None
    book_ids: list[str] | None = None
    book_ids_file: str | None = None
    in_series: bool | None = None


class Boost(_Model):
    name: str = Field(pattern=NAME)
    filter: str
    factor: float = Field(gt=0)


class Promotion(_Model):
    name: str = Field(pattern=NAME)
    filter: str
    at_least: float | None = Field(None, gt=0, le=1)
    at_most: float | None = Field(None, ge=0, lt=1)


class Pin(_Model):
    name: str = Field(pattern=NAME)
    book_id: str
    slot: int = Field(ge=1, le=50)
    until: datetime | None = None
    reason: str = Field("featured", max_length=200)

    @field_validator("until")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("give the time zone, e.g. 2027-01-01T00:00:00Z")
        return value


class Diversity(_Model):
    max_per_author: int | None = Field(None, ge=1)
    max_per_series: int | None = Field(None, ge=1)


class RulesFile(_Model):
    filters: dict[str, BookFilter] = Field(default_factory=dict)
    require: list[str] = Field(default_factory=list)
    hidden: list[str] = Field(default_factory=list)
    expires: dict[str, datetime] = Field(default_factory=dict)
    boosts: list[Boost] = Field(default_factory=list)
    promotions: list[Promotion] = Field(default_factory=list)
    pins: list[Pin] = Field(default_factory=list)
    diversity: Diversity | None = None

    @field_validator("expires")
    @classmethod
    def _aware(cls, value: dict[str, datetime]) -> dict[str, datetime]:
        naive = sorted(b for b, at in value.items() if at.tzinfo is None)
        if naive:
            raise ValueError(f"give the time zone for {naive}, e.g. 2027-01-01T00:00:00Z")
        return value


@dataclass
class Rules:
    """Parsed, validated rules bound to their file's folder (for ``book_ids_file``).

    ``version`` changes with every applied file (cached answers carry it)."""

    spec: RulesFile = field(default_factory=RulesFile)
    folder: Path = field(default_factory=Path)
    version: str = "none"
    ids: dict[str, set[str]] = field(default_factory=dict)  # filter -> book ids (files read)

    @classmethod
    def parse(cls, raw: dict[str, Any] | None, folder: Path, version: str) -> Rules:
        """Validate a rules file's contents; RulesError names what is wrong."""
        try:
            spec = RulesFile.model_validate(raw or {})
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'file'}: {e['msg']}" for e in exc.errors()
            )
            raise RulesError(f"rules file refused: {problems}") from None
        names = set(spec.filters)
        used = [
            *spec.require,
            *(b.filter for b in spec.boosts),
            *(p.filter for p in spec.promotions),
        ]
        unknown = sorted({n for n in used if n not in names})
        if unknown:
            raise RulesError(
                f"rules file refused: unknown filter(s) {unknown}; define them under filters"
            )
        for promotion in spec.promotions:
            if (promotion.at_least is None) == (promotion.at_most is None):
                raise RulesError(
                    f"rules file refused: promotion {promotion.name} needs exactly one of "
                    "at_least, at_most"
                )
        rule_names = [
            *(b.name for b in spec.boosts),
            *(p.name for p in spec.promotions),
            *(p.name for p in spec.pins),
        ]
        twice = sorted({n for n in rule_names if rule_names.count(n) > 1})
        if twice:
            raise RulesError(f"rules file refused: rule name(s) used twice: {twice}")
        slots = [p.slot for p in spec.pins]
        if len(set(slots)) != len(slots):
            raise RulesError("rules file refused: two pins share a slot")
        pinned = [p.book_id for p in spec.pins]
        if len(set(pinned)) != len(pinned):
            raise RulesError("rules file refused: a book is pinned twice")
        ids: dict[str, set[str]] = {}
        for name, spec_filter in spec.filters.items():
            wanted = set(spec_filter.book_ids or [])
            if spec_filter.book_ids_file:
                path = folder / spec_filter.book_ids_file
                try:
                    text = path.read_text()
                except OSError as exc:
                    raise RulesError(
                        f"rules file refused: filter {name}: cannot read {path} ({exc.strerror})"
                    ) from None
                wanted |= {line.strip() for line in text.splitlines() if line.strip()}
            if spec_filter.book_ids is not None or spec_filter.book_ids_file:
                ids[name] = wanted
        return cls(spec, folder, version, ids)

    @property
    def empty(self) -> bool:
        return self.spec == RulesFile()

    def digest(self) -> str:
        """A name of these rules' content (ids files read included): the same on every
        replica and across restarts, so a shared cache never serves other rules' lists."""
        content = {
            "spec": self.spec.model_dump(mode="json"),
            "ids": {k: sorted(v) for k, v in sorted(self.ids.items())},
        }
        text = json.dumps(content, sort_keys=True, default=str)
        return "r-" + hashlib.sha256(text.encode()).hexdigest()[:16]

    def check_books(self, known: Callable[[str], bool]) -> None:
        """Refuse rules naming a book the catalogue does not have (a typo would otherwise
        pin or hide nothing, silently)."""
        named = [*(p.book_id for p in self.spec.pins), *self.spec.hidden, *self.spec.expires]
        missing = sorted({b for b in named if not known(b)})
        if missing:
            raise RulesError(f"rules file refused: unknown book id(s) {missing[:10]}")

    def bind(self, catalogue: Any) -> BoundRules:
        return BoundRules(self, catalogue)


class BoundRules:
    """Rules evaluated against one catalogue: a mask per filter (recomputed when the
    catalogue grows)."""

    def __init__(self, rules: Rules, catalogue: Any) -> None:
        self.rules, self.catalogue = rules, catalogue
        self._masks: dict[str, np.ndarray] = {}
        self._size: tuple[int, int] = (-1, -1)

    def mask(self, name: str) -> np.ndarray:
        """Bool per book index (books newer than the mask never match: see :func:`fitted`).
        Made again after any catalogue edit."""
        generation = (self.catalogue.generation, len(self.catalogue.listed))
        if generation != self._size:
            self._masks, self._size = {}, generation
        mask = self._masks.get(name)
        if mask is None:
            mask = self._masks[name] = self._evaluate(name)
        return mask

    def _evaluate(self, name: str) -> np.ndarray:
        spec = self.rules.spec.filters[name]
        cat = self.catalogue
        # a book being added grows the arrays one after another: read the common part
        size = min(len(cat.ids), len(cat.languages), len(cat.years), len(cat.authors))
        mask = cat.matching(size, spec.languages, spec.authors, spec.year_min, spec.year_max)
        mask[:NUM_RESERVED] = False
        if name in self.rules.ids:
            ids = self.rules.ids[name]
            mask &= np.array([i is not None and i in ids for i in cat.ids[:size]])
        if spec.in_series is not None:
            works = cat.works
            known = min(len(works), size)
            series = np.zeros(size, dtype=bool)
            series[:known] = [works.series_of(b) >= 0 for b in range(known)]
            mask &= series if spec.in_series else ~series
        return mask

    def restrict(
        self, allowed: np.ndarray | None, now: float
    ) -> tuple[np.ndarray | None, list[str]]:
        """``allowed`` with ``require``, ``hidden`` and expired books left out; the names of
        the rules that leave something out."""
        spec = self.rules.spec
        if not (spec.require or spec.hidden or spec.expires):
            return allowed, []
        cat = self.catalogue
        mask = cat.listed.copy() if allowed is None else allowed.copy()
        mask[:NUM_RESERVED] = False
        names = []
        for name in spec.require:
            mask &= fitted(self.mask(name), mask.size)
            names.append(f"require:{name}")
        hidden = [cat.index[b] for b in spec.hidden if b in cat.index]
        if hidden:
            mask[hidden] = False
            names.append("hidden")
        expired = [
            cat.index[b]
            for b, at in spec.expires.items()
            if at.timestamp() <= now and b in cat.index
        ]
        if expired:
            mask[expired] = False
            names.append("expired")
        return mask, names

    def boost(
        self, books: np.ndarray, scores: np.ndarray, log_scale: bool
    ) -> tuple[np.ndarray, list[str]]:
        """Scores after the boosts (``log_scale``: model scores, + ln(factor); else counts,
        x factor); the names of the boosts that matched a book."""
        out = np.asarray(scores, dtype=np.float64).copy()
        names = []
        valid = books >= 0
        for boost in self.rules.spec.boosts:
            mask = self.mask(boost.filter)
            hit = np.zeros(books.shape, dtype=bool)
            inside = valid & (books < mask.size)
            hit[inside] = mask[books[inside]]
            if hit.any():
                names.append(f"boost:{boost.name}")
                if log_scale:
                    out[hit] += math.log(boost.factor)
                else:
                    out[hit] *= boost.factor
        return out, names

    def pins(self, limit: int, shown: Callable[[int], bool], now: float) -> list[tuple[Pin, int]]:
        """The pins this reader's list of ``limit`` gets: in force, within the list, and
        ``shown`` (the pinned book could be offered: not read in any edition, allowed, not
        waiting for an earlier volume), as (pin, book index)."""
        out = []
        for pin in self.rules.spec.pins:
            book = self.catalogue.index.get(pin.book_id, -1)
            in_force = pin.until is None or pin.until.timestamp() > now
            if in_force and pin.slot <= limit and book >= 0 and shown(book):
                out.append((pin, book))
        return out

    def arrange(
        self, stream: Iterator[Pick], limit: int, pins: list[tuple[Pin, int]]
    ) -> tuple[list[Pick], list[str]]:
        """The list of ``limit`` books from the ranked ``stream`` (already in reading order,
        with the pinned books' works left out of it), with diversity caps, promotions and
        ``pins`` (from :meth:`pins`); the names of the rules that changed it."""
        spec = self.rules.spec
        cat = self.catalogue
        names: list[str] = []
        diversity = spec.diversity
        authors: dict[str, int] = {}
        series: dict[int, int] = {}
        caps = [
            (p, self.mask(p.filter), math.floor(p.at_most * limit + 1e-9))
            for p in spec.promotions
            if p.at_most is not None
        ]
        capped = {p.name: 0 for p, _, _ in caps}
        chosen: list[Pick] = []
        rest: list[Pick] = []

        def fits(item: Pick) -> str | None:
            """The rule that keeps ``item`` out of the list, or None."""
            if diversity is not None:
                author = cat.authors[item.book] if item.book < len(cat.authors) else None
                if (
                    diversity.max_per_author
                    and author
                    and authors.get(author, 0) >= diversity.max_per_author
                ):
                    return "diversity:author"
                s = cat.works.series_of(item.book) if item.book < len(cat.works) else -1
                if (
                    diversity.max_per_series
                    and s >= 0
                    and series.get(s, 0) >= diversity.max_per_series
                ):
                    return "diversity:series"
            for promotion, mask, cap in caps:
                if item.book < mask.size and mask[item.book] and capped[promotion.name] >= cap:
                    return f"promotion:{promotion.name}"
            return None

        def take(item: Pick) -> None:
            chosen.append(item)
            author = cat.authors[item.book] if item.book < len(cat.authors) else None
            if author:
                authors[author] = authors.get(author, 0) + 1
            s = cat.works.series_of(item.book) if item.book < len(cat.works) else -1
            if s >= 0:
                series[s] = series.get(s, 0) + 1
            for promotion, mask, _ in caps:
                if item.book < mask.size and mask[item.book]:
                    capped[promotion.name] += 1

        pin_books = {book for _, book in pins}
        room = limit - len(pins)
        lookahead = 0
        for item in stream:
            if item.book in pin_books:
                continue  # placed by its pin
            if len(chosen) >= room:
                rest.append(item)
                lookahead += 1
                if lookahead >= 4 * limit + 50:
                    break
                continue
            blocked = fits(item)
            if blocked is None:
                take(item)
            else:
                rest.append(item)
                if blocked not in names:
                    names.append(blocked)
        for promotion in spec.promotions:
            if promotion.at_least is None:
                continue
            need = math.ceil(promotion.at_least * limit - 1e-9)
            if _bring_in(chosen, rest, self.mask(promotion.filter), need):
                chosen.sort(key=lambda i: -i.score)
                names.append(f"promotion:{promotion.name}")
        for pin, book in sorted(pins, key=lambda p: p[0].slot):
            slot = min(pin.slot, len(chosen) + 1) - 1
            score = (
                chosen[slot].score if slot < len(chosen) else (chosen[-1].score if chosen else 0.0)
            )
            chosen.insert(slot, Pick(book, score, reason=pin.reason))
            names.append(f"pin:{pin.name}")
        return chosen[:limit], names


def _bring_in(chosen: list[Pick], rest: list[Pick], mask: np.ndarray, need: int) -> bool:
    """Give ``need`` of ``chosen``'s places to books ``mask`` matches: the last non-matching
    book gives way to the best-ranked matching one of ``rest``, until enough match or none
    is left. Returns whether anything changed."""

    def matching(book: int) -> bool:
        return book < mask.size and bool(mask[book])

    have = sum(matching(i.book) for i in chosen)
    pool = [i for i in rest if matching(i.book)]
    changed = False
    while have < need and pool:
        victim = next(
            (j for j in range(len(chosen) - 1, -1, -1) if not matching(chosen[j].book)), None
        )
        if victim is None:
            break
        chosen.pop(victim)
        chosen.append(pool.pop(0))
        have += 1
        changed = True
    return changed


def fitted(mask: np.ndarray, size: int) -> np.ndarray:
    """``mask`` cut or padded (False) to ``size`` books."""
    if mask.size >= size:
        return mask[:size]
    return np.concatenate([mask, np.zeros(size - mask.size, dtype=bool)])


class RulesHolder:
    """The rules in force, replaced whole by :meth:`apply` (the file watcher calls it; a
    refused file changes nothing). ``folder``: where ``book_ids_file`` paths start.
    ``known``: whether a book id is in the catalogue (set by the serving core)."""

    def __init__(self, folder: Path | None = None) -> None:
        self.rules = Rules()
        self.folder = folder or Path()
        self.known: Callable[[str], bool] = lambda _b: True
        self.applied = 0
        self._bound: weakref.WeakKeyDictionary[Any, BoundRules] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    @property
    def version(self) -> str:
        return self.rules.version

    def apply(self, raw: dict[str, Any] | None) -> None:
        """Validate and switch to ``raw`` (RulesError: refused, the rules stay)."""
        with self._lock:
            rules = Rules.parse(raw, self.folder, "pending")
            rules.check_books(self.known)
            rules.version = rules.digest() if not rules.empty else "none"
            self.applied += 1
            self.rules = rules
        log.info("business rules applied (%s)", rules.version)

    def bound(self, catalogue: Any) -> BoundRules | None:
        """The rules in force bound to ``catalogue``; None when there are none."""
        rules = self.rules
        if rules.empty:
            return None
        hit = self._bound.get(catalogue)
        if hit is None or hit.rules is not rules:
            hit = self._bound[catalogue] = rules.bind(catalogue)
        return hit


def names_once(parts: Iterable[list[str]]) -> list[str]:
    out: list[str] = []
    for part in parts:
        out += [n for n in part if n not in out]
    return out
