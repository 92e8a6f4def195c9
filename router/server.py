"""The router's gRPC endpoint: the Open Inference Protocol over ``router.core.Router``.

Handlers only translate: ModelInfer passes bytes through; readiness and metadata are answered
from the view. ServerReady stays true while etcd is unreachable (the router keeps serving
from its last view, which is the point); it says so in the ``shoal-view: stale`` trailing
metadata and in the ``shoal_router_view_stale`` gauge.
"""

from __future__ import annotations

import time

import grpc

from router.core import Router
from router.errors import RouteError
from shoal import __version__
from shoal.auth import AuthError, KeyChecker, Principal, bearer
from shoal.frameworks import platform
from shoal.oip import generic_handler
from shoal.pb import shoal_inference_pb2 as pb


class RouterService:
    """The endpoint over ``router``; with ``keys``, every model call needs a tenant's key."""

    def __init__(self, router: Router, keys: KeyChecker | None = None) -> None:
        self.router = router
        self.metrics = router.metrics
        self.keys = keys

    async def _principal(self, context: grpc.aio.ServicerContext) -> Principal | None:
        """The caller, when keys are required; aborts with UNAUTHENTICATED otherwise."""
        if self.keys is None:
            return None
        try:
            return self.keys.check(bearer(context.invocation_metadata()))
        except AuthError as exc:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
            raise

    def handler(self) -> grpc.GenericRpcHandler:
        return generic_handler(
            {
                "ServerLive": self.server_live,
                "ServerReady": self.server_ready,
                "ServerMetadata": self.server_metadata,
                "ModelReady": self.model_ready,
                "ModelMetadata": self.model_metadata,
                "ModelInfer": self.model_infer,
            },
            raw=frozenset({"ModelInfer"}),
        )

    async def model_infer(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        start = time.perf_counter()
        self.metrics.in_flight.inc()
        code = "OK"
        try:
            principal = await self._principal(context)
            return await self.router.infer(raw, context.time_remaining(), principal)
        except RouteError as exc:
            code = exc.code.name
            await context.abort(exc.code, exc.message)
            raise  # unreachable: abort raises
        finally:
            self.metrics.in_flight.dec()
            self.metrics.requests.labels(code).inc()
            self.metrics.latency.observe(time.perf_counter() - start)

    async def server_live(
        self, req: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(
        self, req: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        view = self.router.view
        stale = view.stale
        context.set_trailing_metadata((("shoal-view", "stale" if stale else "current"),))
        return pb.ServerReadyResponse(ready=view.models.synced.is_set())

    async def server_metadata(
        self, req: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="shoal-router", version=__version__, extensions=[])

    async def model_ready(
        self, req: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        principal = await self._principal(context)
        try:
            route = self.router.route(req.name, req.version, principal)
            members = self.router.forwarder.candidates(route.tenant, route.name, route.version)
        except RouteError:
            return pb.ModelReadyResponse(ready=False)
        live = self.router.view.live_worker_ids(route.version.pool)
        return pb.ModelReadyResponse(ready=any(m.worker_id in live for m in members))

    async def model_metadata(
        self, req: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        principal = await self._principal(context)
        try:
            route = self.router.route(req.name, req.version, principal)
        except RouteError as exc:
            await context.abort(exc.code, exc.message)
            raise
        record = self.router.view.model(route.tenant, route.name)
        versions = sorted(record.versions) if record else [route.version.version]
        v = route.version
        resp = pb.ModelMetadataResponse(
            name=req.name,
            versions=[str(x) for x in versions],
            platform=platform(v.framework),
        )
        for spec in v.signature.inputs:
            resp.inputs.add(name=spec.name, datatype=spec.datatype, shape=list(spec.shape))
        for spec in v.signature.outputs:
            resp.outputs.add(name=spec.name, datatype=spec.datatype, shape=list(spec.shape))
        return resp
