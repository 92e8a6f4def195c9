"""Pinning (``shoal models pin T/M``): keep a latency-critical model resident on its shard.

A pin is a key, ``/shoal/pins/<tenant>/<name>`` (``shoal.warmth.Pin``); the placement leader
orders every member of the tenant's shard to hold the model's default-route versions
(``placement.warmth``), and those workers never evict them (``worker.warmth``).

Before writing, ``pin`` checks the budget: with the pool's published members and every pin
of the pool, each member of this tenant's shard would hold the pinned artifact bytes of all
the pins whose shard includes it; when that passes ``max_fraction`` of a member's host budget,
the pin is refused (``PinRefused``) naming the worker and the figures. Artifact bytes
are the estimate here (models in memory are usually of that order); the worker checks the
bytes it measures again when it loads, and refuses a pin past the same bound.
"""

from __future__ import annotations

from dataclasses import dataclass

from shoal.records import (
    CLUSTER,
    WORKERS,
    ClusterConfig,
    ModelRecord,
    PoolSnapshot,
    TenantConfig,
    WorkerInfo,
    default_route,
    model_key,
    placement_key,
    tenant_key,
)
from shoal.shard import Placement, Pool
from shoal.state import StateStore, read_prefix
from shoal.warmth import PINS, Pin, pin_key


class PinRefused(ValueError):
    """The pin would not fit, or the model has nothing to pin."""


class ModelNotFound(LookupError):
    pass


@dataclass(frozen=True, slots=True)
class PinReport:
    pin: Pin
    members: dict[str, tuple[int, int]]  # worker id -> (pinned bytes with this pin, budget)
    created: bool


async def _record(store: StateStore, tenant: str, name: str) -> ModelRecord:
    kv = await store.get(model_key(tenant, name))
    if kv is None:
        raise ModelNotFound(f"model {tenant}/{name} not found")
    return ModelRecord.decode(kv.value, kv.mod_revision)


async def list_pins(store: StateStore) -> list[Pin]:
    kvs, _ = await read_prefix(store, PINS)
    return [Pin.decode(kv.value) for kv in kvs]


async def pin(store: StateStore, tenant: str, name: str, max_fraction: float = 0.8) -> PinReport:
    """Pin ``tenant/name`` after the budget check (module docstring)."""
    rec = await _record(store, tenant, name)
    route = default_route(rec)
    if route is None:
        raise PinRefused(f"model {tenant}/{name} has no versions to pin")
    versions = [rec.versions[v] for v in route.versions if v in rec.versions]
    new = Pin(tenant, name, versions[0].pool, sum(v.size for v in versions))
    pins = [p for p in await list_pins(store) if (p.tenant, p.name) != (tenant, name)]
    pins = [p for p in pins if p.pool == new.pool] + [new]
    members = await _check(store, new, pins, max_fraction)
    existed = await store.get(pin_key(tenant, name)) is not None
    await store.put(pin_key(tenant, name), new.encode())
    return PinReport(new, members, not existed)


async def unpin(store: StateStore, tenant: str, name: str) -> bool:
    """Remove the pin; False when the model was not pinned."""
    return await store.delete(pin_key(tenant, name)) > 0


async def _check(
    store: StateStore, new: Pin, pins: list[Pin], max_fraction: float
) -> dict[str, tuple[int, int]]:
    kv = await store.get(placement_key(new.pool))
    if kv is None:
        return {}  # no members yet: each worker checks when it joins
    snap = PoolSnapshot.decode(kv.value)
    if not snap.members:
        return {}
    overrides = {}
    for tenant in {p.tenant for p in pins}:
        cfg = await store.get(tenant_key(tenant))
        if cfg is not None:
            overrides[tenant] = TenantConfig.decode(cfg.value)
    cluster = await store.get(CLUSTER)
    if cluster is None:
        return {}  # no placement service has run: nothing is placed yet
    salt = bytes.fromhex(ClusterConfig.decode(cluster.value).salt)
    placement = Placement(Pool.from_snapshot(snap, salt), overrides)
    pinned: dict[str, int] = {}
    for p in pins:
        for m in placement.shard(p.tenant):
            pinned[m.worker_id] = pinned.get(m.worker_id, 0) + p.nbytes
    kvs, _ = await read_prefix(store, f"{WORKERS}{new.pool}/")
    workers = {i.worker_id: i for i in (WorkerInfo.decode(kv.value) for kv in kvs)}
    out = {}
    for m in placement.shard(new.tenant):
        info = workers.get(m.worker_id)
        budget = info.host_budget if info is not None else 0
        used = pinned.get(m.worker_id, 0)
        out[m.worker_id] = (used, budget)
        if info is not None and used > budget * max_fraction:
            raise PinRefused(
                f"pinning {new.tenant}/{new.name} ({new.nbytes} B) would put {used} B of pinned "
                f"models on worker {m.worker_id}, over {max_fraction:.0%} of its host budget "
                f"({budget} B): unpin others, or give the pool more memory"
            )
    return out
