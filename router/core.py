"""The router's data plane: resolve the version, admit the tenant, forward, shadow.

``Router.infer`` takes the request as received (bytes) and returns the worker's response
bytes unchanged. Tensors are never decoded: the routing fields are read with a small header
message and the resolved version is *appended* as field 2 (protobuf keeps the last value of a
scalar field), so the worker sees a pinned version without the request being re-encoded.

Per request: resolve (``shoal.records.resolve``; another tenant's model answers like an
unknown one), admit under the tenant's quota (``router.quota``), count the tenant's load
(``router.load``), forward to the shard with bounded retries (``router.forward``), and offer a
shadow copy (``router.shadow``) when the model has a shadow, never slowing the answer.

The object graph is built in one direction: view, forwarder, shadow sender (which sends
through the forwarder) and load reporter first, then the router over them.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from router.choose import MemberPolicy
from router.errors import RouteError
from router.forward import Forwarder, version_field
from router.load import LoadReporter
from router.metrics import RouterMetrics
from router.quota import QuotaExceeded, Quotas
from router.settings import RouterSettings
from router.shadow import ShadowJob, ShadowSender
from router.view import ClusterView
from shoal.auth import Principal
from shoal.pb import shoal_inference_pb2 as pb
from shoal.records import InvalidName, ModelVersion, UnknownVersion, resolve, split_model_name


@dataclass(frozen=True, slots=True)
class Route:
    tenant: str
    name: str
    version: ModelVersion
    via: str


class Router:
    def __init__(
        self,
        view: ClusterView,
        settings: RouterSettings,
        metrics: RouterMetrics,
        policy: MemberPolicy | None = None,
        rng: random.Random | None = None,
        now: Callable[[], float] = time.monotonic,
        *,
        forwarder: Forwarder | None = None,
        shadow: ShadowSender | None = None,
        load: LoadReporter | None = None,
    ) -> None:
        self.view = view
        self.settings = settings
        self.metrics = metrics
        self.rng = rng or random.Random(settings.seed or None)
        self.forwarder = forwarder or Forwarder(view, settings, metrics, policy, now)
        self.shadow = shadow
        self.load = load
        self.quotas = Quotas(
            now,
            settings.tenant_rate_limit,
            settings.tenant_max_in_flight,
            queue_s=settings.tenant_queue_s,
            max_queued=settings.tenant_max_queued,
            on_queued=metrics.quota_queued.inc,
        )

    def route(
        self, model_name: str, model_version: str, principal: Principal | None = None
    ) -> Route:
        """Resolve the model and version; with ``principal``, only the caller's own tenant.

        Another tenant's model answers exactly like a model that does not exist, so a key
        cannot probe which models other tenants have.
        """
        try:
            tenant, name = split_model_name(model_name)
        except InvalidName as exc:
            raise RouteError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        record = self.view.model(tenant, name)
        foreign = principal is not None and not principal.admin and principal.tenant != tenant
        if record is None or foreign:
            raise RouteError(grpc.StatusCode.NOT_FOUND, f"unknown model {model_name}")
        try:
            res = resolve(record, model_version, self.rng)
        except UnknownVersion as exc:
            raise RouteError(grpc.StatusCode.NOT_FOUND, str(exc)) from None
        self.metrics.resolved.labels(res.via.partition(":")[0]).inc()
        return Route(tenant, name, res.version, res.via)

    async def infer(
        self, raw: bytes, timeout: float | None, principal: Principal | None = None
    ) -> bytes:
        try:
            header = pb.InferRoutingHeader.FromString(raw)
        except Exception:  # protobuf raises DecodeError; anything unparsable is the caller's
            raise RouteError(
                grpc.StatusCode.INVALID_ARGUMENT, "malformed ModelInferRequest"
            ) from None
        route = self.route(header.model_name, header.model_version, principal)
        cfg = self.view.tenant(route.tenant)
        timeout = timeout if timeout is not None else self.settings.default_timeout_s
        deadline = time.monotonic() + timeout
        try:
            held = await self.quotas.admit(
                route.tenant,
                cfg.rate_limit if cfg else 0.0,
                cfg.max_in_flight if cfg else 0,
                timeout,
            )
        except QuotaExceeded as exc:
            self.metrics.quota_refused.inc()
            raise RouteError(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)) from None
        try:
            if self.load is not None:
                self.load.count(route.tenant)
            members = self.forwarder.candidates(route.tenant, route.name, route.version)
            payload = raw + version_field(route.version.version)
            resp = await self.forwarder.forward(payload, members, deadline - time.monotonic())
        finally:
            if held:
                self.quotas.release(route.tenant)
        self._maybe_shadow(route, raw, resp)
        return resp

    def _maybe_shadow(self, route: Route, raw: bytes, resp: bytes) -> None:
        record = self.view.model(route.tenant, route.name)
        if self.shadow is None or record is None or record.shadow is None:
            return
        if record.shadow.version == route.version.version:
            return
        if self.rng.random() * 100.0 >= record.shadow.percent:
            return
        self.shadow.offer(
            ShadowJob(
                f"{route.tenant}/{route.name}",
                route.tenant,
                route.version.version,
                record.shadow.version,
                raw,
                resp,
            )
        )

    async def close(self) -> None:
        await self.forwarder.close()
