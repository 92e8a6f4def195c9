"""Router metrics (Prometheus), in a registry of their own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.0, 2.0, 5.0,
)  # fmt: skip


class RouterMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "shoal_router_requests", "ModelInfer requests by outcome", ["code"], registry=r
        )
        self.latency = Histogram(
            "shoal_router_latency_seconds",
            "ModelInfer latency",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.retries = Counter(
            "shoal_router_retries", "attempts sent to another member after a failure", registry=r
        )
        self.resolved = Counter(
            "shoal_router_resolved", "version resolutions by path", ["via"], registry=r
        )
        self.shadow_sent = Counter("shoal_router_shadow_sent", "shadow copies sent", registry=r)
        self.shadow_dropped = Counter(
            "shoal_router_shadow_dropped", "shadow copies dropped (queue full)", registry=r
        )
        self.shadow_errors = Counter(
            "shoal_router_shadow_errors", "shadow copies that failed", ["model"], registry=r
        )
        self.shadow_agree = Counter(
            "shoal_router_shadow_agree",
            "shadow answers equal to the primary's",
            ["model"],
            registry=r,
        )
        self.shadow_compared = Counter(
            "shoal_router_shadow_compared", "shadow answers compared", ["model"], registry=r
        )
        self.view_stale = Gauge(
            "shoal_router_view_stale",
            "1 while etcd is unreachable (serving the last view)",
            registry=r,
        )
        self.quota_queued = Counter(
            "shoal_router_quota_queued",
            "requests admitted after waiting in their tenant's admission queue",
            registry=r,
        )
        self.quota_refused = Counter(
            "shoal_router_quota_refused",
            "requests refused for a tenant quota (rate or in flight)",
            registry=r,
        )
        self.in_flight = Gauge("shoal_router_in_flight", "requests in flight", registry=r)
