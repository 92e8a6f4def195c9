"""Cache policies for the worker's memory tiers (``worker.cache.TieredCache``).

A policy sees every insertion, hit and removal of a tier's entries and chooses the next victim
when the tier needs room. Two are offered (``SHOAL_CACHE_POLICY``):

* ``lru``: least recently used first. Simple and right when recency predicts reuse; but one
  pass over many cold models (a nightly batch job scoring every tenant) flushes the hot set.
* ``tinylfu`` (the default): W-TinyLFU weighted by bytes (Einziger, Friedman, Manes, "TinyLFU:
  A Highly Efficient Cache Admission Policy", 2017; Caffeine's design). A model that is loaded
  enters a small *window* LRU (``window`` of the tier's bytes), so the request that needed it
  is served; when the window overflows, its oldest entry competes with the main region's
  victim and only the one requested more often (by a count-min sketch of recent requests,
  halved every ``sample`` events so old popularity fades) stays. The main region is a
  segmented LRU: entries hit again move from *probation* to *protected* (``protected`` of the
  main bytes); victims come from probation first. A scan's models each arrive once: they pass
  through the window and leave without displacing models that are asked for again and again.

Pinned (in use) and reserved (loading) entries are never chosen: a policy skips them. Every
operation is O(1) amortised plus the entries skipped; the sketch is 4 rows of small counters.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any, Protocol

POLICIES = ("tinylfu", "lru")


class Victim(Protocol):
    """What a policy needs of a cache entry (``worker.cache.Entry``)."""

    key: Any
    nbytes: int
    pins: int

    @property
    def reserved(self) -> bool: ...


class CachePolicy(Protocol):
    """One tier's policy: told of insertions, hits and removals; picks victims."""

    def inserted(self, e: Victim) -> None: ...
    def hit(self, e: Victim) -> None: ...
    def removed(self, e: Victim) -> None: ...
    def resized(self, e: Victim, old_nbytes: int) -> None: ...
    def victim(self) -> Victim | None:
        """The next entry to displace (unpinned, loaded), or None when there is none."""
        ...

    def tracked(self) -> tuple[int, int]:
        """(entries, bytes) the policy holds: the tier's resident ones, exactly."""
        ...

    def score(self, key: Any) -> int:
        """How often ``key`` was asked for recently, as far as the policy counts (0: it does
        not; recency alone then ranks)."""
        ...

    def seed(self, key: Any, count: int) -> None:
        """Credit ``key`` with ``count`` recent requests seen elsewhere (a warm hand-off: the
        model's previous worker counted them), so admission treats a preloaded model as the
        hot model it is."""
        ...

    def admitted(self, e: Victim) -> None:
        """``e`` was admitted on evidence from elsewhere (a hand-off's preload of a model hot
        on its previous worker): it skips the window's contest, whose tie rule keeps the
        incumbent when both counts are saturated, as hot models' are."""
        ...


def _movable(e: Victim) -> bool:
    return e.pins == 0 and not e.reserved


def _first_movable(entries: OrderedDict[Any, Victim]) -> Victim | None:
    for e in entries.values():
        if _movable(e):
            return e
    return None


class Lru:
    """Least recently used first."""

    def __init__(self) -> None:
        self._order: OrderedDict[Any, Victim] = OrderedDict()

    def inserted(self, e: Victim) -> None:
        self._order[e.key] = e

    def hit(self, e: Victim) -> None:
        if e.key in self._order:
            self._order.move_to_end(e.key)

    def removed(self, e: Victim) -> None:
        self._order.pop(e.key, None)

    def resized(self, e: Victim, old_nbytes: int) -> None:
        return None

    def victim(self) -> Victim | None:
        return _first_movable(self._order)

    def tracked(self) -> tuple[int, int]:
        return len(self._order), sum(e.nbytes for e in self._order.values())

    def score(self, key: Any) -> int:
        return 0

    def seed(self, key: Any, count: int) -> None:
        return None

    def admitted(self, e: Victim) -> None:
        return None


class FrequencySketch:
    """A count-min sketch of 4-bit counters (4 rows) with periodic halving (TinyLFU's
    "reset"): estimates how often each key was seen among roughly the last ``sample``
    events."""

    ROWS = 4
    MAX = 15

    def __init__(self, width: int = 1 << 12, sample: int = 0) -> None:
        self.width = 1 << max(4, (max(width, 16) - 1).bit_length())
        self.sample = sample or 10 * self.width
        self._rows = [bytearray(self.width) for _ in range(self.ROWS)]
        self._events = 0

    def _slots(self, key: Hashable) -> list[int]:
        digest = hashlib.blake2b(repr(key).encode(), digest_size=16).digest()
        mask = self.width - 1
        return [int.from_bytes(digest[4 * i : 4 * i + 4], "little") & mask for i in range(4)]

    def estimate(self, key: Hashable) -> int:
        return min(row[s] for row, s in zip(self._rows, self._slots(key), strict=True))

    def add(self, key: Hashable) -> None:
        slots = self._slots(key)
        least = min(row[s] for row, s in zip(self._rows, slots, strict=True))
        if least < self.MAX:  # conservative update: only the smallest counters grow
            for row, s in zip(self._rows, slots, strict=True):
                if row[s] == least:
                    row[s] += 1
        self._events += 1
        if self._events >= self.sample:
            self._events //= 2
            for row in self._rows:
                for i, v in enumerate(row):
                    row[i] = v >> 1


class TinyLfu:
    """Byte-weighted W-TinyLFU over one tier of ``budget`` bytes (module docstring)."""

    def __init__(
        self,
        budget: int,
        window: float = 0.01,
        protected: float = 0.8,
        sketch: FrequencySketch | None = None,
    ) -> None:
        self.budget = budget
        self.window_bytes = max(1, int(budget * window))
        self.protected_bytes = int((budget - self.window_bytes) * protected)
        self.sketch = sketch or FrequencySketch()
        self._window: OrderedDict[Any, Victim] = OrderedDict()
        self._probation: OrderedDict[Any, Victim] = OrderedDict()
        self._protected: OrderedDict[Any, Victim] = OrderedDict()
        self._bytes = {"window": 0, "probation": 0, "protected": 0}
        self._where: dict[Any, str] = {}

    def _region(self, name: str) -> OrderedDict[Any, Victim]:
        return {"window": self._window, "probation": self._probation}.get(name, self._protected)

    def _put(self, e: Victim, region: str) -> None:
        self._region(region)[e.key] = e
        self._bytes[region] += e.nbytes
        self._where[e.key] = region

    def _take(self, e: Victim) -> str | None:
        region = self._where.pop(e.key, None)
        if region is not None:
            self._region(region).pop(e.key, None)
            self._bytes[region] -= e.nbytes
        return region

    def inserted(self, e: Victim) -> None:
        self.sketch.add(e.key)
        self._put(e, "window")

    def hit(self, e: Victim) -> None:
        self.sketch.add(e.key)
        region = self._where.get(e.key)
        if region == "window" or region == "protected":
            self._region(region).move_to_end(e.key)
        elif region == "probation":
            self._take(e)
            self._put(e, "protected")
            # Protected overflows into probation's most recent end, oldest first.
            while self._bytes["protected"] > self.protected_bytes:
                oldest = next(iter(self._protected.values()))
                if oldest is e:
                    break
                self._take(oldest)
                self._put(oldest, "probation")

    def removed(self, e: Victim) -> None:
        self._take(e)

    def resized(self, e: Victim, old_nbytes: int) -> None:
        region = self._where.get(e.key)
        if region is not None:
            self._bytes[region] += e.nbytes - old_nbytes

    def score(self, key: Any) -> int:
        return self.sketch.estimate(key)

    def seed(self, key: Any, count: int) -> None:
        for _ in range(max(0, min(count, FrequencySketch.MAX) - self.sketch.estimate(key))):
            self.sketch.add(key)

    def admitted(self, e: Victim) -> None:
        if self._where.get(e.key) == "window":
            self._take(e)
            self._put(e, "probation")  # most recent end: probation's oldest go before it

    def region(self, key: Any) -> str | None:
        return self._where.get(key)

    def tracked(self) -> tuple[int, int]:
        return len(self._where), sum(self._bytes.values())

    def victim(self) -> Victim | None:
        main_budget = self.budget - self.window_bytes
        # Settle the window first: while it is over its share, its oldest movable entry moves
        # to probation if main has room; else it and main's victim compete, and the one the
        # sketch says is asked for less often is the victim.
        while self._bytes["window"] > self.window_bytes:
            candidate = _first_movable(self._window)
            if candidate is None:
                break
            main = self._bytes["probation"] + self._bytes["protected"]
            if main + candidate.nbytes <= main_budget:
                self._take(candidate)
                self._put(candidate, "probation")
                continue
            rival = _first_movable(self._probation) or _first_movable(self._protected)
            if rival is None:
                return candidate
            if self.sketch.estimate(candidate.key) > self.sketch.estimate(rival.key):
                self._take(candidate)
                self._put(candidate, "probation")
                return rival
            return candidate
        return (
            _first_movable(self._probation)
            or _first_movable(self._protected)
            or _first_movable(self._window)
        )


def make_policy(name: str, budget: int) -> CachePolicy:
    if name == "lru":
        return Lru()
    if name == "tinylfu":
        return TinyLfu(budget)
    raise ValueError(f"unknown cache policy {name!r}: expected one of {', '.join(POLICIES)}")
