"""Read-side views the control plane serves: a tenant's placement, and the worker list.

``tenant_placement`` answers "which workers serve tenant T": for each pool's published
snapshot it runs the one shard function (``shoal.shard.Placement``) with the cluster salt
and the tenant's override, and marks each ranked member ``up`` when its worker record is
present, ready and not draining. ``serving_members`` is what the router would use: walk the
ranked order, skip members that are down, take k. It costs a handful of etcd reads per call
(cluster, tenant, snapshots, workers of the pool): fine for a control plane, not a data path.
"""

from __future__ import annotations

from dataclasses import dataclass

from registry.errors import FailedPrecondition, NotFound
from shoal.records import (
    CLUSTER,
    PLACEMENT,
    WORKERS,
    ClusterConfig,
    Member,
    PoolSnapshot,
    TenantConfig,
    WorkerInfo,
    check_ident,
    placement_key,
    tenant_key,
)
from shoal.shard import Placement, Pool
from shoal.state import StateStore, read_prefix


@dataclass(frozen=True, slots=True)
class RankedMember:
    worker_id: str
    address: str
    zone: str
    rank: int  # 0-based position in the tenant's selection order
    in_shard: bool  # among the first k
    up: bool  # registered, ready, not draining
    warm: bool = False  # holds the model (only when known)


@dataclass(frozen=True, slots=True)
class PoolPlacement:
    pool: str
    epoch: int
    shard_size: int
    override: str  # "", "shard_size" or "members"
    members: tuple[RankedMember, ...]

    def serving(self) -> list[RankedMember]:
        """The members the router uses: the first k that are up, in ranked order."""
        return [m for m in self.members if m.up][: self.shard_size]


async def cluster_salt(store: StateStore) -> bytes:
    kv = await store.get(CLUSTER)
    if kv is None:
        raise FailedPrecondition(
            "the cluster is not initialised (no /shoal/cluster): start placement"
        )
    return bytes.fromhex(ClusterConfig.decode(kv.value).salt)


async def tenant_config(store: StateStore, tenant: str) -> TenantConfig | None:
    kv = await store.get(tenant_key(tenant))
    return TenantConfig.decode(kv.value) if kv is not None else None


async def live_workers(store: StateStore, pool: str = "") -> dict[str, WorkerInfo]:
    """worker id -> record, for one pool or all (records that fail to decode are skipped)."""
    prefix = WORKERS + (f"{pool}/" if pool else "")
    kvs, _ = await read_prefix(store, prefix)
    out = {}
    for kv in kvs:
        try:
            info = WorkerInfo.decode(kv.value)
        except (ValueError, TypeError, KeyError):
            continue
        out[info.worker_id] = info
    return out


async def tenant_placement(store: StateStore, tenant: str, pool: str = "") -> list[PoolPlacement]:
    """The tenant's ranked members in one pool, or in every pool with a snapshot."""
    check_ident("tenant", tenant)
    salt = await cluster_salt(store)
    override = await tenant_config(store, tenant)
    if pool:
        kv = await store.get(placement_key(check_ident("pool", pool)))
        if kv is None:
            raise NotFound(f"pool {pool!r} has no published placement (no workers have joined)")
        snapshots = [PoolSnapshot.decode(kv.value)]
    else:
        kvs, _ = await read_prefix(store, PLACEMENT)
        snapshots = [PoolSnapshot.decode(kv.value) for kv in kvs]
    workers = await live_workers(store, pool)
    return [_view(snap, salt, tenant, override, workers) for snap in snapshots]


def _view(
    snap: PoolSnapshot,
    salt: bytes,
    tenant: str,
    override: TenantConfig | None,
    workers: dict[str, WorkerInfo],
) -> PoolPlacement:
    overrides = {tenant: override} if override is not None else {}
    ranked, k = Placement(Pool.from_snapshot(snap, salt), overrides).ranked(tenant)
    kind = ""
    if override is not None and override.members:
        kind = "members"
    elif override is not None and override.shard_size > 0:
        kind = "shard_size"
    return PoolPlacement(
        snap.pool,
        snap.epoch,
        k,
        kind,
        tuple(
            RankedMember(m.worker_id, m.address, m.zone, i, i < k, _up(m, workers))
            for i, m in enumerate(ranked)
        ),
    )


def _up(member: Member, workers: dict[str, WorkerInfo]) -> bool:
    info = workers.get(member.worker_id)
    return info is not None and info.ready and not info.draining
