"""The router process: the native gateway (the data path) and its control plane.

No Python runs per request. The gateway (``shoal._native.Gateway``, native/src/gateway) binds
the inference endpoint and answers every request from its routing table; this module wires
what Python owns around it:

* ``router.feed``: the gateway's table, fed from etcd (models, tenants and their keys and
  quotas, pool snapshots, worker leases, the cluster salt), and its view state (ready after
  the first full read; stale while etcd is unreachable: it keeps serving from the last view);
* ``router.metrics``: the gateway's counters as Prometheus families, on an HTTP port;
* ``router.shadow``: the shadow copies' outcomes, compared and logged;
* ``router.load``: per-tenant request rates published for the hot-tenant controller.

``RouterApp(settings)`` starts nothing (``shoal.runner.Runner`` runs it). ``start()`` binds the
gateway (NOT_SERVING until the view is complete), connects to etcd and fills the table, then
reports the view ready.
``stop(grace)``: health NOT_SERVING, stop accepting, in-flight requests get ``grace`` seconds
to finish, then the control plane stops.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from prometheus_client import start_http_server

from router.feed import PREFIXES, PrefixFeed
from router.load import LoadReporter
from router.metrics import RouterMetrics
from router.settings import RouterSettings
from router.shadow import RotatingJsonl, ShadowRecorder
from shoal import __version__
from shoal._native import Gateway
from shoal.etcd import EtcdStore
from shoal.state import StateStore

log = logging.getLogger(__name__)


def gateway_for(s: RouterSettings) -> Gateway:
    """The native gateway configured from the router's settings."""
    return Gateway(
        host=s.host,
        port=s.port,
        rest_port=None if s.rest_port < 0 else s.rest_port,
        threads=s.gateway_threads,
        retries=s.retries,
        default_timeout_s=s.default_timeout_s,
        spill_at=s.spill_at,
        eject_s=s.eject_s,
        worker_ping_s=s.worker_ping_s,
        shadow_queue=s.shadow_queue,
        max_message_bytes=s.max_message_bytes,
        seed=s.seed,
        tenant_rate_limit=s.tenant_rate_limit,
        tenant_max_in_flight=s.tenant_max_in_flight,
        tenant_queue_s=s.tenant_queue_s,
        tenant_max_queued=s.tenant_max_queued,
        auth=s.auth,
        tls_cert=s.tls_cert,
        tls_key=s.tls_key,
        tls_ca=s.tls_ca,
        tls_client_auth=False,
        name="shoal-router",
        version=__version__,
    )


class RouterApp:
    def __init__(self, settings: RouterSettings, store: StateStore | None = None) -> None:
        """``store``: the state store to follow (default: etcd at ``settings.etcd``, opened by
        ``start`` and closed by ``stop``)."""
        self.settings = settings
        self._own_store: EtcdStore | None = None
        if store is None:
            store = self._own_store = EtcdStore.of(settings)
        self._store: StateStore = store
        self.gateway = gateway_for(settings)
        self.feeds = [
            PrefixFeed(self._store, prefix, self.gateway.apply, self._view_changed)
            for prefix in PREFIXES
        ]
        #: Unix times of the start of the first etcd read and of the view being complete.
        self.view_read_at = 0.0
        self.view_ready_at = 0.0
        self.metrics = RouterMetrics(
            self.gateway.stats, lambda: self.stale, lambda: (self.view_read_at, self.view_ready_at)
        )
        self.address = ""
        self.metrics_address = ""
        self._http: object | None = None
        self.shadow = ShadowRecorder(
            self.gateway.take_shadow,
            self.metrics,
            RotatingJsonl(
                Path(settings.data_dir) / "shadow" / "shadow.jsonl",
                settings.shadow_log_bytes,
                settings.shadow_log_keep,
            ),
            settings.shadow_atol,
        )
        self.load: LoadReporter | None = None

    @property
    def stale(self) -> bool:
        return any(f.stale for f in self.feeds)

    @property
    def ready(self) -> bool:
        return all(f.synced.is_set() for f in self.feeds)

    def _view_changed(self) -> None:
        self.gateway.set_view(self.ready, self.stale)

    async def start(self) -> None:
        s = self.settings
        self.address = await asyncio.to_thread(self.gateway.start)
        if self._own_store is not None:
            await self._own_store.connect()
        self.view_read_at = time.time()
        await asyncio.gather(*(f.start() for f in self.feeds))
        self.view_ready_at = time.time()
        self._view_changed()
        log.info("routing view read in %.3f s", self.view_ready_at - self.view_read_at)
        self.shadow.start()
        host, _, port = (s.advertise_address or self.address).rpartition(":")
        self.load = LoadReporter(
            self._store,
            s.router_id or f"router-{host}-{port}",
            self.gateway.take_load,
            s.load_interval_s,
        )
        self.load.start()
        if s.metrics_port >= 0:
            httpd, _ = start_http_server(s.metrics_port, s.host, registry=self.metrics.registry)
            self._http = httpd
            self.metrics_address = f"{s.host}:{httpd.server_port}"

    def banner(self) -> list[str]:
        rest = self.gateway.rest_address
        return [
            f"router: {self.address}",
            *([f"rest: {rest}"] if rest else []),
            f"metrics: {self.metrics_address}",
        ]

    async def stop(self, grace: float = 5.0) -> None:
        await asyncio.to_thread(self.gateway.stop, grace)
        await self.shadow.stop()
        if self.load is not None:
            await self.load.stop()
        await asyncio.gather(*(f.stop() for f in self.feeds))
        if self._own_store is not None:
            await self._own_store.close()
        if self._http is not None:
            self._http.shutdown()  # type: ignore[attr-defined]
