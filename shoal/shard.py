"""Shuffle sharding: which workers of a pool serve a tenant, and which member is a model's
primary. The one shard function of the router, the placement service and the simulator.

Rendezvous (highest-random-weight) hashing, keyed by a secret cluster salt:

* ``h_t = blake2b(tenant, key=salt)``, ``h_w = blake2b(worker_id, key=salt)`` (64 bits each);
* ``score(t, w) = splitmix64(h_t XOR h_w)``; workers are ranked by descending score.

The shard of size k is a prefix of one *selection order* per tenant: step i picks the
best-ranked remaining worker whose zone holds fewer than ``ceil((i+1)/Z)`` of the picks so far
(Z = number of zones in the pool; without zones this is plain rank order). Hence:

* deterministic for (salt, members, tenant); a different salt gives an unrelated order;
* k distinct members, at most ``ceil(k/Z)`` per zone;
* growing k keeps the old members (a prefix of the same order: hot tenants stay warm);
* adding or removing a worker only changes shards it enters or leaves (by one member), so
  about k/(N+1) of tenants move on a join;
* the order goes on past k, so a caller can skip members that are down.

``Placement`` is the per-request path (cached per snapshot epoch); ``shard_matrix`` is the
vectorised path (numpy) for millions of tenants, tested equal to the scalar path. There is one
implementation of the score (``_scores``) used by both.

Within a shard, the *primary* of a model version is member ``blake2b_64(key) mod k`` (in
selection order) with ``key = "tenant/name:version"``, unkeyed: the router sends the version
there first (``router.choose.WarmPrimaryPolicy``) so it stays warm on one worker, and the
simulator charges it there. ``primary_index`` is the per-request form, ``primary_indices`` the
vectorised one; both read the same digest (``_primary_digest``).
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from shoal.records import Member, PoolSnapshot, TenantConfig

_U64 = np.uint64
_GOLDEN = _U64(0x9E3779B97F4A7C15)
_M1 = _U64(0xBF58476D1CE4E5B9)
_M2 = _U64(0x94D049BB133111EB)


def _h64(data: str, salt: bytes) -> int:
    return int.from_bytes(
        hashlib.blake2b(data.encode(), digest_size=8, key=salt[:64]).digest(), "little"
    )


def _primary_digest(model_key: str) -> bytes:
    return hashlib.blake2b(model_key.encode(), digest_size=8).digest()


def primary_index(model_key: str, k: int) -> int:
    """Position of ``model_key``'s primary among the first ``k`` (> 0) members of its shard."""
    return int.from_bytes(_primary_digest(model_key), "little") % k


def primary_indices(model_keys: Sequence[str], k: np.ndarray) -> np.ndarray:
    """``primary_index`` of every key, ``k[m]`` being model m's shard size (int64 array).

    Cost: one unkeyed 8-byte blake2b per model (~1 us); the digests are gathered into one
    buffer and reduced with numpy.
    """
    digests = b"".join([_primary_digest(key) for key in model_keys])
    h = np.frombuffer(digests, dtype="<u8")
    return (h % k.astype(np.uint64)).astype(np.int64)


def tenant_hashes(tenants: Sequence[str], salt: bytes) -> np.ndarray:
    """64-bit keyed hashes of tenant ids (uint64 array)."""
    return np.fromiter((_h64(t, salt) for t in tenants), dtype=_U64, count=len(tenants))


def _scores(h_t: np.ndarray, h_w: np.ndarray) -> np.ndarray:
    """splitmix64(h_t XOR h_w) for every (tenant, worker): shape [T, N] (uint64)."""
    with np.errstate(over="ignore"):
        x = (h_t[:, None] ^ h_w[None, :]) + _GOLDEN
        x = (x ^ (x >> _U64(30))) * _M1
        x = (x ^ (x >> _U64(27))) * _M2
        out: np.ndarray = x ^ (x >> _U64(31))
        return out


@dataclass(frozen=True)
class Pool:
    """One pool's members with their hashes precomputed (built once per snapshot epoch)."""

    members: tuple[Member, ...]
    salt: bytes
    shard_size: int = 2
    epoch: int = 0
    worker_hashes: np.ndarray = field(init=False, repr=False, compare=False)
    zone_ids: np.ndarray = field(init=False, repr=False, compare=False)
    zone_list: list[int] = field(init=False, repr=False, compare=False)
    n_zones: int = field(init=False)

    def __post_init__(self) -> None:
        ids = [m.worker_id for m in self.members]
        if len(set(ids)) != len(ids):
            raise ValueError("duplicate worker ids in pool")
        zones = sorted({m.zone for m in self.members})
        zone_index = {z: i for i, z in enumerate(zones)}
        object.__setattr__(self, "worker_hashes", tenant_hashes(ids, self.salt))
        object.__setattr__(
            self,
            "zone_ids",
            np.array([zone_index[m.zone] for m in self.members], dtype=np.int64),
        )
        object.__setattr__(self, "zone_list", self.zone_ids.tolist())
        object.__setattr__(self, "n_zones", max(1, len(zones)))

    @classmethod
    def from_snapshot(cls, snap: PoolSnapshot, salt: bytes) -> Pool:
        return cls(snap.members, salt, snap.shard_size, snap.epoch)

    def __len__(self) -> int:
        return len(self.members)


def _selection_order(
    scores: np.ndarray, zone_ids: Sequence[int], n_zones: int, length: int
) -> list[int]:
    """Member indices for one tenant: ``length`` picks in selection order (see the module
    docstring), then every other member in plain rank order."""
    ranked: list[int] = np.argsort(scores, kind="stable")[::-1].tolist()
    if n_zones <= 1:
        return ranked
    counts = [0] * n_zones
    order: list[int] = []
    skipped: list[int] = []  # passed over for their zone's cap; all outrank the cursor
    cursor = 0
    n = len(ranked)
    while len(order) < length:
        cap = -(-(len(order) + 1) // n_zones)
        pick = -1
        for j, idx in enumerate(skipped):
            if counts[zone_ids[idx]] < cap:
                pick = skipped.pop(j)
                break
        while pick < 0 and cursor < n:
            idx = ranked[cursor]
            cursor += 1
            if counts[zone_ids[idx]] < cap:
                pick = idx
            else:
                skipped.append(idx)
        if pick < 0:  # every remaining member sits in a zone at its cap: relax the cap
            pick = skipped.pop(0)
        counts[zone_ids[pick]] += 1
        order.append(pick)
    picked = set(order)
    return order + [i for i in ranked if i not in picked]


def selection_order(pool: Pool, tenant: str, length: int | None = None) -> list[int]:
    """Indices into ``pool.members``, best first: the first k <= ``length`` are the tenant's
    shard of size k; all members are returned (the tail as fallbacks in rank order)."""
    n = len(pool)
    length = n if length is None else min(length, n)
    if n == 0:
        return []
    h_t = np.array([_h64(tenant, pool.salt)], dtype=_U64)
    scores = _scores(h_t, pool.worker_hashes)[0]
    return _selection_order(scores, pool.zone_list, pool.n_zones, length)


def shard_matrix(pool: Pool, h_t: np.ndarray, k: int, chunk: int = 65536) -> np.ndarray:
    """Vectorised shards: ``[T, k]`` member indices in selection order for tenant hashes.

    Equal to ``selection_order(pool, t, k)`` row by row. Memory is bounded by ``chunk`` x N
    scores at a time; cost is O(T x N x k) for zoned pools, O(T x N) otherwise.
    """
    n = len(pool)
    k = min(k, n)
    out = np.empty((len(h_t), k), dtype=np.int64)
    zone_onehot = np.eye(pool.n_zones, dtype=np.int64)[pool.zone_ids]  # [N, Z]
    for lo in range(0, len(h_t), chunk):
        s = _scores(h_t[lo : lo + chunk], pool.worker_hashes)
        rows = np.arange(s.shape[0])
        if pool.n_zones <= 1:
            top = (
                np.argpartition(s, n - k, axis=1)[:, n - k :]
                if k < n
                else np.tile(np.arange(n), (s.shape[0], 1))
            )
            order = np.argsort(s[rows[:, None], top], axis=1, kind="stable")[:, ::-1]
            out[lo : lo + s.shape[0]] = top[rows[:, None], order]
            continue
        # Zoned: k masked-argmax steps. A member is eligible when unpicked and its zone is
        # under the cap; if no member is eligible the cap is relaxed (as in the scalar walk).
        taken = np.zeros(s.shape, dtype=bool)
        counts = np.zeros((s.shape[0], pool.n_zones), dtype=np.int64)
        # Rank positions make ties impossible and match the scalar path's stable argsort.
        rank = np.argsort(np.argsort(s, axis=1, kind="stable"), axis=1)
        for i in range(k):
            cap = math.ceil((i + 1) / pool.n_zones)
            under = counts[:, pool.zone_ids] < cap  # [T, N]
            eligible = under & ~taken
            none = ~eligible.any(axis=1)
            eligible[none] = ~taken[none]
            pick = np.where(eligible, rank, -1).argmax(axis=1)
            out[lo + rows, i] = pick
            taken[rows, pick] = True
            counts += zone_onehot[pick]
    return out


#: Fallback positions past k that still follow the zone rule; beyond them, plain rank order.
FALLBACK_ZONED = 8


class Placement:
    """Per-request shard lookup for one pool snapshot, with per-tenant overrides.

    Results are memoised per tenant (LRU, ``cache_size`` entries); build a new ``Placement``
    when the snapshot epoch or the overrides change.
    """

    def __init__(
        self,
        pool: Pool,
        overrides: Mapping[str, TenantConfig] | None = None,
        cache_size: int = 100_000,
    ) -> None:
        self.pool = pool
        self.overrides = dict(overrides or {})
        self._index = {m.worker_id: i for i, m in enumerate(pool.members)}
        self._cache: OrderedDict[str, tuple[tuple[Member, ...], int]] = OrderedDict()
        self._cache_size = cache_size

    def shard_size(self, tenant: str) -> int:
        cfg = self.overrides.get(tenant)
        if cfg is not None and cfg.members:
            return len([w for w in cfg.members if w in self._index])
        k = cfg.shard_size if cfg is not None and cfg.shard_size > 0 else self.pool.shard_size
        return min(k, len(self.pool))

    def ranked(self, tenant: str) -> tuple[tuple[Member, ...], int]:
        """(every member in selection order, k): the first k are the shard, the rest are
        fallbacks in order. Explicit member overrides come first, in their given order."""
        hit = self._cache.get(tenant)
        if hit is not None:
            self._cache.move_to_end(tenant)
            return hit
        k = self.shard_size(tenant)
        order = selection_order(self.pool, tenant, k + FALLBACK_ZONED)
        cfg = self.overrides.get(tenant)
        if cfg is not None and cfg.members:
            pinned = [self._index[w] for w in cfg.members if w in self._index]
            order = pinned + [i for i in order if i not in set(pinned)]
        result = (tuple(self.pool.members[i] for i in order), k)
        self._cache[tenant] = result
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return result

    def shard(self, tenant: str) -> tuple[Member, ...]:
        members, k = self.ranked(tenant)
        return members[:k]
