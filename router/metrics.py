"""Router metrics (Prometheus), in a registry of their own, under the names the Python router
exported.

The request path's counters live in the native gateway; ``GatewayCollector`` reads them at
scrape time (``Gateway.stats()``), so nothing in Python runs per request. Shadow agreement is
counted here, per model, by the shadow recorder (``router/shadow.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

Stats = Mapping[str, Any]


class GatewayCollector(Collector):
    """The gateway's counters as Prometheus families, read when scraped."""

    def __init__(
        self,
        stats: Callable[[], Stats],
        stale: Callable[[], bool],
        view_times: Callable[[], tuple[float, float]],
    ) -> None:
        self._stats = stats
        self._stale = stale
        self._view_times = view_times

    def collect(self) -> Iterator[Metric]:
        s = self._stats()
        requests = CounterMetricFamily(
            "shoal_router_requests", "ModelInfer requests by outcome", labels=["code"]
        )
        for code, n in sorted(s["requests"].items()):
            requests.add_metric([code], n)
        yield requests
        buckets = [(_le(le), n) for le, n in s["latency_buckets"]]
        yield HistogramMetricFamily(
            "shoal_router_latency_seconds",
            "ModelInfer latency",
            buckets=buckets,
            sum_value=s["latency_sum"],
        )
        yield _counter(
            "shoal_router_retries", "attempts sent to another member after a failure", s["retries"]
        )
        resolved = CounterMetricFamily(
            "shoal_router_resolved", "version resolutions by path", labels=["via"]
        )
        for via, n in sorted(s["resolved"].items()):
            resolved.add_metric([via], n)
        yield resolved
        yield _counter("shoal_router_shadow_sent", "shadow copies sent", s["shadow_sent"])
        yield _counter(
            "shoal_router_shadow_dropped", "shadow copies dropped (queue full)", s["shadow_dropped"]
        )
        yield _counter(
            "shoal_router_quota_queued",
            "requests admitted after waiting in their tenant's admission queue",
            s["quota_queued"],
        )
        yield _counter(
            "shoal_router_quota_refused",
            "requests refused for a tenant quota (rate or in flight)",
            s["quota_refused"],
        )
        yield GaugeMetricFamily(
            "shoal_router_in_flight", "requests in flight", value=s["in_flight"]
        )
        yield GaugeMetricFamily(
            "shoal_router_view_stale",
            "1 while etcd is unreachable (serving the last view)",
            value=1.0 if self._stale() else 0.0,
        )
        yield GaugeMetricFamily(
            "shoal_router_models", "models in the gateway's routing table", value=s["models"]
        )
        read_at, ready_at = self._view_times()
        yield GaugeMetricFamily(
            "shoal_router_view_read_started_timestamp_seconds",
            "when this router began its first read of etcd (unix time)",
            value=read_at,
        )
        yield GaugeMetricFamily(
            "shoal_router_view_ready_timestamp_seconds",
            "when its routing view was first complete (unix time; 0: not yet)",
            value=ready_at,
        )


def _le(bound: float) -> str:
    """A bucket bound as prometheus_client writes it (``0.5``, ``+Inf``)."""
    return "+Inf" if math.isinf(bound) else repr(float(bound))


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


class RouterMetrics:
    """The router's registry: the gateway's families and the shadow recorder's per-model
    counters."""

    def __init__(
        self,
        stats: Callable[[], Stats],
        stale: Callable[[], bool],
        view_times: Callable[[], tuple[float, float]] = lambda: (0.0, 0.0),
    ) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        r.register(GatewayCollector(stats, stale, view_times))
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
