"""The tiered model cache: byte budgets per memory tier, demotion before eviction, pinning.

Pure bookkeeping, no I/O and no clock: the worker calls it from its event loop only, so it
needs no locks. Tiers, fastest first: ``gpu`` -> ``host``; below them sits the disk tier of
artifact bytes (``worker.diskcache``), which is where a model dropped from host memory
"demotes" to when its artifact is still on disk.

Algorithm. Each memory tier keeps its entries and a byte total, and a policy of its own
(``worker.policy``: W-TinyLFU by default, or LRU) that is told of every insertion, hit and
removal. To fit ``n`` bytes in a tier, the policy picks victims among the tier's *unpinned,
admitted* entries until ``used + n <= budget``; a victim
in ``gpu`` is demoted to ``host`` (through the injected ``demote`` function, which may
re-create the model for the CPU and report its new size) when that is possible, otherwise
dropped; a victim in ``host`` is dropped (it remains on disk if the disk tier has it).

Bounds and failure modes:

* ``reserve()`` accounts the estimated bytes of a load *before* it starts, so concurrent loads
  cannot together overshoot the budget; ``admit()`` replaces the estimate by the measured
  size. A tier's bytes therefore exceed its budget only when every other entry in it is
  pinned or reserved (a request is using it) or by the one entry just admitted when it alone
  is larger than the budget; the next ``release()`` or ``admit()`` restores the bound.
* A pinned entry (``acquire()`` / ``release()``, a reference count) is never displaced: the
  policy takes the next candidate instead.
* Operations are O(1) amortised plus O(pinned entries skipped) per eviction for LRU.

cachetools is not used here because its ``popitem`` cannot skip pinned entries nor demote;
the disk tier and the record cache, which need neither, do use it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Generic, Literal, TypeVar

from worker.policy import CachePolicy, Lru, Victim, make_policy

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Tier(StrEnum):
    GPU = "gpu"
    HOST = "host"
    DISK = "disk"


MEMORY_TIERS = (Tier.GPU, Tier.HOST)


@dataclass(eq=False, slots=True)
class Entry(Generic[K, V]):
    """A cached model (or a reservation for one being loaded: ``value is None``)."""

    key: K
    value: V | None
    nbytes: int
    tier: Tier
    pins: int = 0

    @property
    def reserved(self) -> bool:
        return self.value is None


@dataclass(frozen=True, slots=True)
class CacheEvent:
    """A displacement: ``demote`` moves to ``dst``; ``evict`` frees the memory for good."""

    kind: Literal["demote", "evict"]
    key: Any
    src: Tier
    dst: Tier | None
    nbytes: int


class LargestFirstPolicy(Lru):
    """Largest unpinned entry first (frees the most with the fewest reloads); O(n) a pick."""

    def victim(self) -> Victim | None:
        best: Victim | None = None
        for e in self._order.values():
            if e.pins == 0 and not e.reserved and (best is None or e.nbytes > best.nbytes):
                best = e
        return best


#: A tier's budget -> its policy (``worker.policy.make_policy`` by name).
PolicyFactory = Callable[[int], CachePolicy]


#: gpu value -> (host value, host bytes), or None when it cannot move to host memory.
Demoter = Callable[[Any, Any], "tuple[Any, int] | None"]


class TieredCache(Generic[K, V]):
    """Byte-budgeted memory tiers with demotion; see the module docstring for the bounds."""

    def __init__(
        self,
        budgets: Mapping[Tier, int],
        policy: str | PolicyFactory = "lru",
        demote: Demoter | None = None,
        on_disk: Callable[[K], bool] | None = None,
        listener: Callable[[CacheEvent], None] | None = None,
    ) -> None:
        self._budget = {t: int(budgets.get(t, 0)) for t in MEMORY_TIERS}
        factory: PolicyFactory = (
            (lambda budget: make_policy(policy, budget)) if isinstance(policy, str) else policy
        )
        self._policy = {t: factory(self._budget[t]) for t in MEMORY_TIERS}
        self._demote = demote
        self._on_disk = on_disk or (lambda _k: False)
        self._listener = listener or (lambda _e: None)
        self._lru: dict[Tier, OrderedDict[K, Entry[K, V]]] = {
            t: OrderedDict() for t in MEMORY_TIERS
        }
        self._used = dict.fromkeys(MEMORY_TIERS, 0)
        self._resident = dict.fromkeys(MEMORY_TIERS, 0)
        self._count = dict.fromkeys(MEMORY_TIERS, 0)
        self._index: dict[K, Entry[K, V]] = {}

    # --- queries ------------------------------------------------------------------------

    def budget(self, tier: Tier) -> int:
        return self._budget[tier]

    def used(self, tier: Tier) -> int:
        """Bytes accounted in ``tier``: resident entries plus reservations."""
        return self._used[tier]

    def resident_bytes(self, tier: Tier) -> int:
        """Bytes of loaded models in ``tier`` (reservations excluded)."""
        return self._resident[tier]

    def count(self, tier: Tier) -> int:
        return self._count[tier]

    def keys(self, tier: Tier) -> list[K]:
        """Resident keys of ``tier``, least recently used first."""
        return [k for k, e in self._lru[tier].items() if e.value is not None]

    def entries(self, tier: Tier) -> Iterator[Entry[K, V]]:
        return iter(list(self._lru[tier].values()))

    def __contains__(self, key: object) -> bool:
        e = self._index.get(key)  # type: ignore[arg-type]  # any object may be looked up
        return e is not None and e.value is not None

    def __len__(self) -> int:
        return sum(self._count.values())

    def peek(self, key: K) -> Entry[K, V] | None:
        """The resident entry for ``key`` without touching its recency."""
        e = self._index.get(key)
        return e if e is not None and e.value is not None else None

    def hottest(self, n: int) -> list[tuple[Entry[K, V], int]]:
        """Up to ``n`` resident entries with their policy scores, hottest first: by score,
        then most recently used (all of them ranked: O(entries log entries))."""
        ranked = []
        for tier in MEMORY_TIERS:
            policy = self._policy[tier]
            for i, e in enumerate(self._lru[tier].values()):
                if e.value is not None:
                    ranked.append((policy.score(e.key), i, e))
        ranked.sort(key=lambda r: (-r[0], -r[1]))
        return [(e, score) for score, _i, e in ranked[: max(0, n)]]

    def policy(self, tier: Tier) -> CachePolicy:
        return self._policy[tier]

    def fits(self, tier: Tier, nbytes: int) -> bool:
        """Whether ``nbytes`` could be made to fit in ``tier`` by displacing unpinned entries."""
        movable = sum(e.nbytes for e in self._lru[tier].values() if e.pins == 0 and e.value)
        return (
            nbytes <= self._budget[tier]
            and self._used[tier] - movable + nbytes <= (self._budget[tier])
        )

    # --- use ----------------------------------------------------------------------------

    def get(self, key: K) -> Entry[K, V] | None:
        """The resident entry for ``key``, marked most recently used."""
        e = self.peek(key)
        if e is not None:
            self._lru[e.tier].move_to_end(key)
            self._policy[e.tier].hit(e)
        return e

    def acquire(self, key: K) -> Entry[K, V] | None:
        """``get`` and pin: the entry stays resident until the matching ``release``."""
        e = self.get(key)
        if e is not None:
            e.pins += 1
        return e

    def pin(self, key: K) -> Entry[K, V] | None:
        """Pin the resident entry without counting a use (the load that just admitted it
        was the use: counting it again would credit every miss twice in the policy)."""
        e = self.peek(key)
        if e is not None:
            e.pins += 1
        return e

    def release(self, entry: Entry[K, V]) -> None:
        """Unpin; when the last pin goes, bring the entry's tier back within budget."""
        if entry.pins <= 0:
            raise ValueError(f"release of an unpinned entry {entry.key!r}")
        entry.pins -= 1
        if entry.pins == 0 and self._index.get(entry.key) is entry:
            self._make_room(entry.tier, 0)

    # --- loading ------------------------------------------------------------------------

    def reserve(self, key: K, tier: Tier, nbytes: int) -> bool:
        """Account ``nbytes`` for a load of ``key`` into ``tier``, displacing others to fit.

        Returns whether the tier is within budget afterwards (False: everything else there is
        pinned or reserved; the load may go ahead and overshoot, or pick another tier).
        """
        if key in self._index:
            raise KeyError(f"{key!r} is already resident or being loaded")
        fits = self._make_room(tier, nbytes)
        e: Entry[K, V] = Entry(key, None, nbytes, tier)
        self._insert(e)
        return fits

    def unreserve(self, key: K) -> None:
        """Drop the reservation of a load that failed."""
        e = self._index.get(key)
        if e is not None and e.value is None:
            self._unlink(e)

    def admit(self, key: K, value: V, nbytes: int, tier: Tier) -> Entry[K, V]:
        """Insert a loaded model as most recently used, replacing its reservation if any.

        Other entries are displaced to fit ``nbytes``; the new entry itself never is here.
        """
        old = self._index.get(key)
        if old is not None:
            if old.value is not None:
                raise KeyError(f"{key!r} is already resident")
            self._unlink(old)
        self._make_room(tier, nbytes)
        e: Entry[K, V] = Entry(key, value, nbytes, tier)
        self._insert(e)
        return e

    def remove(self, key: K) -> Entry[K, V] | None:
        """Drop ``key`` now (pinned or not: the caller's references keep the value alive)."""
        e = self._index.get(key)
        if e is None:
            return None
        self._unlink(e)
        if e.value is not None:
            self._listener(CacheEvent("evict", key, e.tier, None, e.nbytes))
        return e

    # --- internals ----------------------------------------------------------------------

    def _insert(self, e: Entry[K, V]) -> None:
        self._lru[e.tier][e.key] = e
        self._used[e.tier] += e.nbytes
        self._index[e.key] = e
        if e.value is not None:
            self._resident[e.tier] += e.nbytes
            self._count[e.tier] += 1
            self._policy[e.tier].inserted(e)

    def _unlink(self, e: Entry[K, V]) -> None:
        del self._lru[e.tier][e.key]
        self._used[e.tier] -= e.nbytes
        del self._index[e.key]
        if e.value is not None:
            self._resident[e.tier] -= e.nbytes
            self._count[e.tier] -= 1
            self._policy[e.tier].removed(e)

    def _make_room(self, tier: Tier, nbytes: int) -> bool:
        budget = self._budget[tier]
        while self._used[tier] + nbytes > budget:
            victim = self._policy[tier].victim()
            if victim is None:
                return False
            self._displace(self._index[victim.key])
        return True

    def _displace(self, victim: Entry[K, V]) -> None:
        self._unlink(victim)
        src = victim.tier
        if src is Tier.GPU and self._demote is not None and self._budget[Tier.HOST] > 0:
            moved = self._demote(victim.key, victim.value)
            # Demote only into room that can be made: host is never pushed over budget for a
            # model nobody is using (it is dropped instead).
            if (
                moved is not None
                and self.fits(Tier.HOST, moved[1])
                and self._make_room(Tier.HOST, moved[1])
            ):
                value, nbytes = moved
                self._insert(Entry(victim.key, value, nbytes, Tier.HOST))
                self._listener(CacheEvent("demote", victim.key, src, Tier.HOST, nbytes))
                return
        if src is Tier.HOST and self._on_disk(victim.key):
            self._listener(CacheEvent("demote", victim.key, src, Tier.DISK, victim.nbytes))
            return
        self._listener(CacheEvent("evict", victim.key, src, None, victim.nbytes))
