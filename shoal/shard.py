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

There is one implementation, in Rust (native/src/shard.rs, ``shoal._native``): the gateway
computes shards per request with it, and this module is its Python face for the placement
service, the registry's lookups, the simulator and the CLI. ``tests/vectors/shard.json``
(produced by the Python implementation this replaced) pins its results. ``Placement`` is the
per-tenant path (memoised per snapshot epoch); ``shard_matrix`` the vectorised one for
millions of tenants (computed without the GIL), equal to it row by row.

Within a shard, the *primary* of a model version is member ``blake2b_64(key) mod k`` (in
selection order) with ``key = "tenant/name:version"``, unkeyed: the router sends the version
there first (the gateway's member policy, ``member_order``) so it stays warm on one worker,
and the simulator charges it there. ``primary_index`` is the per-request form,
``primary_indices`` the vectorised one.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from shoal import _native
from shoal._native import FALLBACK_ZONED, NativePool
from shoal.records import Member, PoolSnapshot, TenantConfig

__all__ = [
    "FALLBACK_ZONED",
    "Placement",
    "Pool",
    "member_order",
    "primary_index",
    "primary_indices",
    "selection_order",
    "shard_matrix",
    "tenant_hashes",
]


def primary_index(model_key: str, k: int) -> int:
    """Position of ``model_key``'s primary among the first ``k`` (> 0) members of its shard."""
    return _native.primary_index(model_key, k)


def primary_indices(model_keys: Sequence[str], k: np.ndarray) -> np.ndarray:
    """``primary_index`` of every key, ``k[m]`` being model m's shard size (int64 array)."""
    return _native.primary_indices(list(model_keys), np.ascontiguousarray(k, dtype=np.int64))


def member_order(
    ranked: Sequence[int],
    k: int,
    model_key: str,
    spill_at: int,
    in_flight: Sequence[int],
    unhealthy: Sequence[bool],
) -> list[int]:
    """The gateway's member choice for a request: member indices to try, best first.

    ``ranked`` is the tenant's selection order (its first ``k`` the shard); ``in_flight`` and
    ``unhealthy`` give each member's load and state by index. The primary comes first unless
    it has ``spill_at`` requests in flight (then the shard least loaded first); the members
    past ``k`` follow; unhealthy members go last, in that order.
    """
    return _native.member_order(
        list(ranked), k, model_key, spill_at, list(in_flight), list(unhealthy)
    )


def tenant_hashes(tenants: Sequence[str], salt: bytes) -> np.ndarray:
    """64-bit keyed hashes of tenant ids (uint64 array)."""
    return _native.tenant_hashes(list(tenants), salt)


@dataclass(frozen=True)
class Pool:
    """One pool's members with their hashes precomputed (built once per snapshot epoch).

    Raises ``ValueError`` for duplicate worker ids.
    """

    members: tuple[Member, ...]
    salt: bytes
    shard_size: int = 2
    epoch: int = 0
    native: NativePool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        native = NativePool(
            [m.worker_id for m in self.members],
            [m.zone for m in self.members],
            self.salt,
            self.shard_size,
        )
        object.__setattr__(self, "native", native)

    @classmethod
    def from_snapshot(cls, snap: PoolSnapshot, salt: bytes) -> Pool:
        return cls(snap.members, salt, snap.shard_size, snap.epoch)

    @property
    def worker_hashes(self) -> np.ndarray:
        return self.native.worker_hashes()

    @property
    def n_zones(self) -> int:
        return self.native.n_zones

    def __len__(self) -> int:
        return len(self.members)


def selection_order(pool: Pool, tenant: str, length: int | None = None) -> list[int]:
    """Indices into ``pool.members``, best first: the first k <= ``length`` are the tenant's
    shard of size k; all members are returned (the tail as fallbacks in rank order)."""
    return pool.native.selection_order(tenant, length)


def shard_matrix(pool: Pool, h_t: np.ndarray, k: int) -> np.ndarray:
    """Vectorised shards: ``[T, min(k, N)]`` member indices in selection order for tenant
    hashes, equal to ``selection_order(pool, t, k)`` row by row. O(T x N x k) for zoned
    pools, O(T x N) otherwise; computed without the GIL."""
    return pool.native.shard_matrix(np.ascontiguousarray(h_t, dtype=np.uint64), k)


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
        self._cache: OrderedDict[str, tuple[tuple[Member, ...], int]] = OrderedDict()
        self._cache_size = cache_size

    def shard_size(self, tenant: str) -> int:
        return self.ranked(tenant)[1]

    def ranked(self, tenant: str) -> tuple[tuple[Member, ...], int]:
        """(every member in selection order, k): the first k are the shard, the rest are
        fallbacks in order. Explicit member overrides come first, in their given order."""
        hit = self._cache.get(tenant)
        if hit is not None:
            self._cache.move_to_end(tenant)
            return hit
        cfg = self.overrides.get(tenant)
        size = cfg.shard_size if cfg is not None else 0
        members = list(cfg.members) if cfg is not None else []
        order, k = self.pool.native.ranked(tenant, size, members)
        result = (tuple(self.pool.members[i] for i in order), k)
        self._cache[tenant] = result
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return result

    def shard(self, tenant: str) -> tuple[Member, ...]:
        members, k = self.ranked(tenant)
        return members[:k]
