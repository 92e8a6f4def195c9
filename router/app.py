"""The router process: view + core + gRPC server + metrics, with an explicit lifecycle
(run by ``shoal.runner.Runner``).

``RouterApp(settings)`` starts nothing; ``start()`` connects to etcd, reads the view, binds
the endpoint and the metrics port; ``stop(grace)`` stops accepting, lets in-flight requests
finish for up to ``grace`` seconds, then cancels them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
from prometheus_client import start_http_server

from router.core import Router
from router.forward import Forwarder
from router.load import LoadReporter
from router.metrics import RouterMetrics
from router.server import RouterService
from router.settings import RouterSettings
from router.shadow import RotatingJsonl, ShadowSender
from router.view import ClusterView
from shoal import tls
from shoal.auth import KeyChecker
from shoal.etcd import EtcdStore

log = logging.getLogger(__name__)


class RouterApp:
    def __init__(self, settings: RouterSettings) -> None:
        self.settings = settings
        self.metrics = RouterMetrics()
        self.address = ""
        self.metrics_address = ""
        self._store: EtcdStore | None = None
        self._server: grpc.aio.Server | None = None
        self.router: Router | None = None

    async def start(self) -> None:
        """Build the graph in one direction (view, forwarder, shadow sender, load reporter,
        router, endpoint), then start its background parts and serve."""
        s = self.settings
        self._store = store = await EtcdStore(s.etcd).connect()
        view = ClusterView(store)
        await view.start()
        self.metrics.view_stale.set_function(lambda: 1.0 if view.stale else 0.0)
        self._server = server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", s.max_message_bytes),
                ("grpc.max_send_message_length", s.max_message_bytes),
                ("grpc.so_reuseport", 0),
            ]
        )
        port = tls.add_port(server, f"{s.host}:{s.port}", s)
        self.address = f"{s.host}:{port}"
        forwarder = Forwarder(view, s, self.metrics)
        shadow_log = RotatingJsonl(
            Path(s.data_dir) / "shadow" / "shadow.jsonl", s.shadow_log_bytes, s.shadow_log_keep
        )
        shadow = ShadowSender(
            forwarder.send_shadow, self.metrics, shadow_log, s.shadow_queue, s.shadow_atol
        )
        load = LoadReporter(store, s.router_id or f"router-{s.host}-{port}", s.load_interval_s)
        self.router = router = Router(
            view, s, self.metrics, forwarder=forwarder, shadow=shadow, load=load
        )
        # Keys are cached until the tenant records change (a revocation applies at once).
        keys = KeyChecker(view.tenant, generation=lambda: view.tenants.changes) if s.auth else None
        server.add_generic_rpc_handlers((RouterService(router, keys).handler(),))
        shadow.start()
        await server.start()
        load.start()
        if s.metrics_port >= 0:
            httpd, _ = start_http_server(s.metrics_port, s.host, registry=self.metrics.registry)
            self.metrics_address = f"{s.host}:{httpd.server_port}"

    def banner(self) -> list[str]:
        return [f"router: {self.address}", f"metrics: {self.metrics_address}"]

    async def stop(self, grace: float = 5.0) -> None:
        if self._server is not None:
            await self._server.stop(grace)
        if self.router is not None:
            if self.router.shadow is not None:
                await self.router.shadow.stop()
            if self.router.load is not None:
                await self.router.load.stop()
            await self.router.view.stop()
            await self.router.close()
        if self._store is not None:
            await self._store.close()
