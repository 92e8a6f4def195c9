"""Prometheus metrics of one placement instance, on its own registry (tests run several)."""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from shoal.records import PoolSnapshot, TenantConfig
from shoal.warmth import WarmOrder


class PlacementMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.leader = Gauge(
            "shoal_placement_leader", "1 while this instance leads", registry=self.registry
        )
        self.published = Counter(
            "shoal_placement_snapshots_published",
            "pool snapshots this instance published",
            ["pool"],
            registry=self.registry,
        )
        self.epoch = Gauge(
            "shoal_placement_epoch",
            "last epoch published per pool",
            ["pool"],
            registry=self.registry,
        )
        self.members = Gauge(
            "shoal_placement_members",
            "members in the last snapshot",
            ["pool"],
            registry=self.registry,
        )
        self.hot_changes = Counter(
            "shoal_placement_hot_tenant_changes",
            "tenant shard sizes written by the hot-tenant controller",
            registry=self.registry,
        )
        self.warm_orders = Counter(
            "shoal_placement_warm_orders",
            "warm orders written to workers, by reason (hand-off, join, pins)",
            ["reason"],
            registry=self.registry,
        )
        self.preloads_ordered = Counter(
            "shoal_placement_preloads_ordered",
            "model versions workers were asked to preload (hand-offs and joins)",
            registry=self.registry,
        )
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def on_publish(self, snap: PoolSnapshot) -> None:
        self.published.labels(snap.pool).inc()
        self.epoch.labels(snap.pool).set(snap.epoch)
        self.members.labels(snap.pool).set(len(snap.members))

    def on_order(self, worker_id: str, order: WarmOrder) -> None:
        self.warm_orders.labels(order.reason.split(" ")[0]).inc()
        self.preloads_ordered.inc(len(order.preload))

    def on_hot_change(self, cfg: TenantConfig) -> None:
        self.hot_changes.inc()

    def serve(self, host: str, port: int) -> int:
        """Serve ``/metrics`` on a background thread; returns the bound port."""
        self._server, self._thread = start_http_server(port, host, self.registry)
        return int(self._server.server_port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
