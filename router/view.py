"""The router's in-memory view of the cluster, kept current from etcd by watches.

It mirrors models, pool snapshots, tenant overrides, live workers and the cluster salt, and
answers the two per-request questions without touching etcd: "which record is
``tenant/name``?" and "which members, in which order, serve this tenant in this pool?".
Placements are rebuilt lazily per pool when its snapshot epoch or the tenant overrides change.

While etcd is unreachable the mirrors keep their last content (``stale`` is then true), so
known models keep answering.
"""

from __future__ import annotations

import asyncio

from shoal.mirror import PrefixMirror
from shoal.records import (
    CLUSTER,
    MODELS,
    PLACEMENT,
    TENANTS,
    WORKERS,
    ClusterConfig,
    ModelRecord,
    PoolSnapshot,
    TenantConfig,
    WorkerInfo,
    model_key,
    placement_key,
    tenant_key,
)
from shoal.shard import Placement, Pool
from shoal.state import StateStore


class ClusterView:
    def __init__(self, store: StateStore, placement_cache: int = 100_000) -> None:
        self.store = store
        self._placement_cache = placement_cache
        self.models: PrefixMirror[ModelRecord] = PrefixMirror(
            store, MODELS, lambda k, v, rev: ModelRecord.decode(v, rev)
        )
        self.snapshots: PrefixMirror[PoolSnapshot] = PrefixMirror(
            store, PLACEMENT, lambda k, v, rev: PoolSnapshot.decode(v), self._snapshots_changed
        )
        self.tenants: PrefixMirror[TenantConfig] = PrefixMirror(
            store, TENANTS, lambda k, v, rev: TenantConfig.decode(v), self._tenants_changed
        )
        self.workers: PrefixMirror[WorkerInfo] = PrefixMirror(
            store, WORKERS, lambda k, v, rev: WorkerInfo.decode(v), self._workers_changed
        )
        self.cluster: PrefixMirror[ClusterConfig] = PrefixMirror(
            store, CLUSTER, lambda k, v, rev: ClusterConfig.decode(v), self._cluster_changed
        )
        self._mirrors = (self.models, self.snapshots, self.tenants, self.workers, self.cluster)
        self._placements: dict[str, Placement] = {}
        self._live: dict[str, frozenset[str]] = {}

    async def start(self, ready_within: float = 30.0) -> None:
        await asyncio.gather(*(m.start(ready_within=ready_within) for m in self._mirrors))

    async def stop(self) -> None:
        await asyncio.gather(*(m.stop() for m in self._mirrors))

    @property
    def stale(self) -> bool:
        return any(m.stale for m in self._mirrors)

    def _snapshots_changed(self, keys: set[str]) -> None:
        for key in keys:
            self._placements.pop(key.removeprefix(PLACEMENT), None)

    def _workers_changed(self, keys: set[str]) -> None:
        self._live.clear()

    def _tenants_changed(self, keys: set[str]) -> None:
        self._placements.clear()

    def tenant(self, tenant: str) -> TenantConfig | None:
        return self.tenants.get(tenant_key(tenant))

    def _cluster_changed(self, keys: set[str]) -> None:
        self._placements.clear()

    def model(self, tenant: str, name: str) -> ModelRecord | None:
        return self.models.get(model_key(tenant, name))

    def placement(self, pool: str) -> Placement | None:
        """The pool's placement for the current snapshot, or None if none is published."""
        p = self._placements.get(pool)
        if p is not None:
            return p
        snap = self.snapshots.get(placement_key(pool))
        cluster = self.cluster.get(CLUSTER)
        if snap is None or cluster is None or not snap.members:
            return None
        overrides = {cfg.tenant: cfg for cfg in self.tenants.items.values()}
        p = Placement(
            Pool.from_snapshot(snap, bytes.fromhex(cluster.salt)),
            overrides,
            cache_size=self._placement_cache,
        )
        self._placements[pool] = p
        return p

    def live_worker_ids(self, pool: str) -> frozenset[str]:
        """Workers of ``pool`` whose lease is alive and which are not draining (cached)."""
        live = self._live.get(pool)
        if live is None:
            prefix = f"{WORKERS}{pool}/"
            live = frozenset(
                w.worker_id
                for k, w in self.workers.items.items()
                if k.startswith(prefix) and not w.draining
            )
            self._live[pool] = live
        return live
