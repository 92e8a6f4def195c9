"""Prometheus metrics of one worker process, in their own registry (never the global one).

Names (counters get ``_total`` in the exposition):

* ``shoal_worker_requests{method,code}``, ``shoal_worker_request_seconds{method}``;
* ``shoal_worker_cache_hits{tier}`` (gpu, host: model resident; disk: artifact on disk),
  ``shoal_worker_cache_misses{tier}`` (memory: not resident; disk: fetched from the store),
  ``shoal_worker_cache_evictions{tier}``, ``shoal_worker_cache_demotions{tier,to}``;
* ``shoal_worker_loads{result}`` (one per load attempt: OK or the failure code),
  ``shoal_worker_load_seconds{framework}``, ``shoal_worker_loads_in_flight``;
* ``shoal_worker_resident_bytes{tier}``, ``shoal_worker_models_resident{tier}``,
  ``shoal_worker_budget_bytes{tier}`` (read from the cache when scraped);
* ``shoal_worker_requests_in_flight``, ``shoal_worker_batch_rows`` (rows per runtime call
  actually run), ``shoal_worker_native_requests`` (ModelInfer answered by the native front
  without Python: a resident tree model's warm path);
* protections: ``shoal_worker_rejected{reason}`` (rows, concurrency, quarantine),
  ``shoal_worker_expired{stage}`` (requests not run because their deadline passed while
  waiting: queue — for a busy model, batch, pool), ``shoal_worker_quarantines{kind}`` (a
  version entered quarantine: predict, load), ``shoal_worker_abandoned_calls{kind}`` (runtime
  calls that overran their timeout) and ``shoal_worker_stuck_calls{kind}`` (abandoned calls
  whose thread has not returned yet: a Python thread cannot be killed).

Labelled children used on the request path are resolved once (``child()`` caches them): a
``labels()`` lookup per request would cost more than the counter increment. What the native
front counts (``worker.front``) is added to the same series when they are scraped
(``on_collect``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric

_LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip
_LOAD_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class _BeforeCollect:
    """Registered first, so a scrape runs its hooks before any metric is read."""

    def __init__(self) -> None:
        self.hooks: list[Callable[[], None]] = []

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> list[Metric]:
        for hook in self.hooks:
            hook()
        return []


class WorkerMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self._before = _BeforeCollect()
        r.register(self._before)
        self.requests = Counter(
            "shoal_worker_requests",
            "RPCs by method and status code",
            ["method", "code"],
            registry=r,
        )
        self.latency = Histogram(
            "shoal_worker_request_seconds",
            "RPC latency seen by the worker",
            ["method"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.hits = Counter(
            "shoal_worker_cache_hits", "lookups served by a tier", ["tier"], registry=r
        )
        self.misses = Counter(
            "shoal_worker_cache_misses", "lookups a tier could not serve", ["tier"], registry=r
        )
        self.preloads = Counter(
            "shoal_worker_preloads",
            "warm hand-off preloads by outcome (loaded, resident already, failed)",
            ["outcome"],
            registry=r,
        )
        self.pinned_models = Gauge(
            "shoal_worker_pinned_models", "pinned model versions held resident", registry=r
        )
        self.pinned_bytes = Gauge(
            "shoal_worker_pinned_bytes", "bytes of the pinned model versions", registry=r
        )
        self.pinned_refused = Counter(
            "shoal_worker_pinned_refused",
            "pins refused because pinned bytes would pass max_pinned_fraction of the budget",
            registry=r,
        )
        self.evictions = Counter(
            "shoal_worker_cache_evictions", "models dropped from a tier", ["tier"], registry=r
        )
        self.demotions = Counter(
            "shoal_worker_cache_demotions",
            "models moved to a slower tier",
            ["tier", "to"],
            registry=r,
        )
        self.loads = Counter(
            "shoal_worker_loads", "load attempts by result", ["result"], registry=r
        )
        self.load_seconds = Histogram(
            "shoal_worker_load_seconds",
            "fetch + verify + deserialize time of successful loads",
            ["framework"],
            buckets=_LOAD_BUCKETS,
            registry=r,
        )
        self.loads_in_flight = Gauge("shoal_worker_loads_in_flight", "loads running", registry=r)
        self.requests_in_flight = Gauge(
            "shoal_worker_requests_in_flight", "RPCs being served", registry=r
        )
        self.batch_rows = Histogram(
            "shoal_worker_batch_rows", "rows per runtime call", buckets=_ROW_BUCKETS, registry=r
        )
        self.resident_bytes = Gauge(
            "shoal_worker_resident_bytes", "bytes of models resident per tier", ["tier"], registry=r
        )
        self.models_resident = Gauge(
            "shoal_worker_models_resident", "models resident per tier", ["tier"], registry=r
        )
        self.budget_bytes = Gauge(
            "shoal_worker_budget_bytes", "byte budget per tier", ["tier"], registry=r
        )
        self.inline_predictions = Counter(
            "shoal_worker_inline_predictions",
            "runtime calls run on the event loop (short, bounded models; worker/inline.py)",
            registry=r,
        )
        self.native_requests = Counter(
            "shoal_worker_native_requests",
            "ModelInfer requests the native front answered without Python (worker/front.py)",
            registry=r,
        )
        self.rejected = Counter(
            "shoal_worker_rejected",
            "requests refused by a limit or a quarantine",
            ["reason"],
            registry=r,
        )
        self.expired = Counter(
            "shoal_worker_expired",
            "requests not run because their deadline passed while they waited",
            ["stage"],
            registry=r,
        )
        self.quarantines = Counter(
            "shoal_worker_quarantines",
            "model versions put in quarantine (failing or hanging runtime calls)",
            ["kind"],
            registry=r,
        )
        self.abandoned = Counter(
            "shoal_worker_abandoned_calls",
            "runtime calls abandoned after overrunning their timeout",
            ["kind"],
            registry=r,
        )
        self.stuck_calls = Gauge(
            "shoal_worker_stuck_calls",
            "abandoned runtime calls whose thread has not returned",
            ["kind"],
            registry=r,
        )
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def on_collect(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` at every scrape, before the metrics are read."""
        self._before.hooks.append(hook)

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, memoised."""
        key = (id(metric), labels)
        c = self._children.get(key)
        if c is None:
            c = self._children[key] = metric.labels(*labels)
        return c

    def watch_tier(
        self, tier: str, nbytes: Callable[[], float], count: Callable[[], float], budget: int
    ) -> None:
        """Report a tier's bytes and model count by calling these when scraped."""
        self.resident_bytes.labels(tier).set_function(nbytes)
        self.models_resident.labels(tier).set_function(count)
        self.budget_bytes.labels(tier).set(budget)
