"""The placement service process: control plane for everyone, snapshots and hot tenants for
the leader.

Lifecycle (``start`` / ``stop``; the constructor starts nothing):

1. connect to etcd and make sure ``/shoal/cluster`` exists (created once, with a random
   secret salt, by a create-if-absent transaction: two instances starting together agree);
2. serve ``shoal.v1.Control`` (``registry.control`` over ``registry.facade.Registry``; both
   instances serve it: every registry write is a CAS, safe from either);
3. campaign for leadership in the background. While leading, run the snapshot publisher and
   the hot-tenant loop, both fenced by the election key; when the lease is lost, or a fenced
   write fails, stop them and campaign again.

``stop`` resigns first (revoking the lease, so a standby takes over at once rather than after
the TTL), then stops the gRPC server with a grace period for calls in flight.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from typing import Any, cast

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from placement.election import LeaderElection, lead_forever
from placement.hot import HotPolicy, HotTenantController, HotTenantLoop
from placement.metrics import PlacementMetrics
from placement.publisher import SnapshotPublisher
from placement.settings import PlacementSettings
from placement.warmth import WarmPlanner, warm_mirrors
from registry.control import ControlService
from registry.facade import Registry
from registry.gc import ArtifactGC
from registry.workers import WorkerAdminClient
from shoal import tls
from shoal.auth import ADMIN, KeyChecker, KeyInterceptor
from shoal.etcd import EtcdStore
from shoal.mirror import PrefixMirror
from shoal.objstore import ObjectStore
from shoal.pb import shoal_control_pb2_grpc as pb_grpc
from shoal.records import CLUSTER, ClusterConfig, TenantConfig, tenant_key
from shoal.state import Compare, Put, StateStore
from shoal.tasks import cancel_and_wait, cancel_and_wait_all

#: The control-plane service's name in grpc.health.v1 (beside "" for the whole server).
CONTROL_SERVICE = "shoal.v1.Control"
#: grpc.health.v1 methods: open to callers without a key (probes).
HEALTH = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"})

log = logging.getLogger(__name__)


async def ensure_cluster(
    store: StateStore, shard_size: int, new_salt: Callable[[], str] | None = None
) -> ClusterConfig:
    """The cluster config, created (create-if-absent) with a fresh secret salt when missing."""
    kv = await store.get(CLUSTER)
    if kv is None:
        salt = (new_salt or (lambda: secrets.token_hex(32)))()
        cfg = ClusterConfig(salt=salt, default_shard_size=shard_size)
        res = await store.txn([Compare(CLUSTER, 0)], [Put(CLUSTER, cfg.encode())])
        if res.succeeded:
            log.info("created /shoal/cluster (default shard size %d)", shard_size)
            return cfg
        kv = await store.get(CLUSTER)  # another instance created it first
        if kv is None:
            raise RuntimeError("/shoal/cluster vanished right after being created")
    return ClusterConfig.decode(kv.value)


def _gc_mode(value: str) -> ArtifactGC:
    if value not in ("cluster", "model", "off"):
        raise ValueError(f"SHOAL_ARTIFACT_GC={value!r}: use cluster, model or off")
    return cast(ArtifactGC, value)


class PlacementService:
    """One placement instance (see module docstring)."""

    def __init__(self, settings: PlacementSettings, now: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self._now = now
        self.instance_id = settings.instance_id or f"{socket.gethostname()}-{os.getpid()}"
        self.metrics = PlacementMetrics()
        self.address = ""
        self._health: Any = None
        self.metrics_address = ""
        self._store: EtcdStore | None = None
        self._server: grpc.aio.Server | None = None
        self._workers: WorkerAdminClient | None = None
        self._registry: Registry | None = None
        self._election: LeaderElection | None = None
        self._lead_task: asyncio.Task[None] | None = None
        self.cluster: ClusterConfig | None = None
        self._admin_keys: PrefixMirror[TenantConfig] | None = None

    @property
    def election(self) -> LeaderElection:
        if self._election is None:
            raise RuntimeError("service not started")
        return self._election

    async def start(self) -> None:
        s = self.settings
        store = self._store = await EtcdStore.of(s).connect()
        self.cluster = await ensure_cluster(store, s.shard_size)
        registry = Registry(
            store,
            ObjectStore(s.store_url(), s),
            default_pools=s.default_pools(),
            max_artifact_bytes=s.max_artifact_bytes,
            cas_retries=s.cas_retries,
            artifact_gc=_gc_mode(s.artifact_gc),
            keep_versions=s.keep_versions,
            validate_processes=s.validate_processes,
            validate_threads=s.validate_threads,
            gc_batch=s.gc_batch,
            now=self._now,
        )
        self._registry = registry
        self._workers = WorkerAdminClient(s)
        servicer = ControlService(
            registry, store, self._workers, s.warm_timeout_s, s.stats_timeout_s
        )
        interceptors = []
        if s.auth:
            # Control-plane calls need an admin key (SECURITY.md); keys come from etcd.
            admin = self._admin_keys = PrefixMirror(
                store, tenant_key(ADMIN), lambda k, v, rev: TenantConfig.decode(v)
            )
            await admin.start()
            checker = KeyChecker(
                lambda t: admin.get(tenant_key(t)) if t == ADMIN else None,
                generation=lambda: admin.changes,
            )
            # Health probes (Kubernetes, load balancers) carry no key.
            interceptors.append(KeyInterceptor(checker, admin_only=True, open_methods=HEALTH))
        # Artifacts arrive in chunks; the whole-message cap only needs to fit one chunk.
        self._server = grpc.aio.server(
            options=[("grpc.max_receive_message_length", 64 << 20)], interceptors=interceptors
        )
        pb_grpc.add_ControlServicer_to_server(servicer, self._server)
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        port = tls.add_port(self._server, f"{s.host}:{s.control_port}", s)
        if port == 0:
            raise OSError(f"cannot listen on {s.host}:{s.control_port}")
        await self._server.start()
        for service in ("", CONTROL_SERVICE):
            await self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
        self.address = s.advertise_address or f"{s.host}:{port}"
        if s.metrics_port >= 0:
            self.metrics_address = f"{s.host}:{self.metrics.serve(s.host, s.metrics_port)}"
        self._election = LeaderElection(store, self.instance_id, s.lease_ttl)
        self._lead_task = asyncio.create_task(self._lead_forever(), name="placement-leader")
        # Validation workers import their runtimes now, not in the first registration.
        registry.start()

    async def _lead_forever(self) -> None:
        await lead_forever(self.election, self._lead, lambda on: self.metrics.leader.set(int(on)))

    async def _lead(self) -> None:
        """Run the leader's loops until one fails or the lease is lost."""
        election, store, cluster = self.election, self._store, self.cluster
        assert store is not None and cluster is not None and election.fence is not None
        s = self.settings
        mirrors = warm_mirrors(store)
        for mirror in mirrors:
            await mirror.start()
        planner = WarmPlanner(
            store,
            election.fence,
            bytes.fromhex(cluster.salt),
            cluster.default_shard_size,
            *mirrors,
            wait_s=s.handoff_wait_s,
            preload_fraction=s.preload_fraction,
            on_order=self.metrics.on_order,
        )
        publisher = SnapshotPublisher(
            store,
            election.fence,
            cluster.default_shard_size,
            s.debounce_s,
            now=self._now,
            on_publish=self.metrics.on_publish,
            planner=planner,
        )
        policy = HotPolicy(
            s.hot_rate, cluster.default_shard_size, s.hot_max_shard, s.hot_cooldown_s, s.hot_drain_s
        )
        hot = HotTenantLoop(
            store,
            HotTenantController(policy, self._now),
            election.fence,
            s.hot_interval_s,
            on_change=self.metrics.on_hot_change,
        )
        tasks = [
            asyncio.create_task(publisher.run(), name="snapshot-publisher"),
            asyncio.create_task(hot.run(), name="hot-tenants"),
            asyncio.create_task(election.wait_lost(), name="lease-watch"),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await cancel_and_wait_all(tasks)
            for mirror in mirrors:
                await mirror.stop()
        for t in done:
            if not t.cancelled() and (exc := t.exception()) is not None:
                raise exc

    def banner(self) -> list[str]:
        metrics = [f"metrics: {self.metrics_address}"] if self.metrics_address else []
        return [*metrics, f"control: {self.address}"]

    async def stop(self, grace: float = 5.0) -> None:
        """Resign, stop serving (in-flight calls get ``grace`` seconds), close connections."""
        await cancel_and_wait(self._lead_task)
        self._lead_task = None
        if self._election is not None:
            await self._election.resign()
        if self._health is not None:
            await self._health.enter_graceful_shutdown()  # probes see NOT_SERVING
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
        if self._workers is not None:
            await self._workers.close()
        if self._registry is not None:
            self._registry.close()  # after the server: no registration is running any more
            self._registry = None
        if self._admin_keys is not None:
            await self._admin_keys.stop()
        self.metrics.close()
        if self._store is not None:
            await self._store.close()
            self._store = None
