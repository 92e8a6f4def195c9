"""The router's data plane: resolve the version, pick members, forward, retry, shadow.

``Router.infer`` takes the request as received (bytes) and returns the worker's response
bytes unchanged. Tensors are never decoded: the routing fields are read with a small header
message and the resolved version is *appended* as field 2 (protobuf keeps the last value of a
scalar field), so the worker sees a pinned version without the request being re-encoded.

Retries: a member that answers UNAVAILABLE (or cannot be reached) is ejected for a short time
and the next candidate is tried, at most ``retries`` more times and never past the caller's
deadline. A member that refuses with the ``shoal-retry: elsewhere`` trailer (the model's
concurrency line is full on that worker) is not ejected, but the next candidate is tried the
same way. INVALID_ARGUMENT, NOT_FOUND and every other status are returned as they are.
"""

from __future__ import annotations

import logging
import random
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from router.choose import Ejector, MemberPolicy, WarmPrimaryPolicy
from router.load import LoadReporter
from router.metrics import RouterMetrics
from router.quota import QuotaExceeded, Quotas
from router.settings import RouterSettings
from router.shadow import ShadowJob, ShadowSender
from router.view import ClusterView
from shoal import tls
from shoal.auth import Principal
from shoal.oip import RETRY_ELSEWHERE, InferenceStub
from shoal.pb import shoal_inference_pb2 as pb
from shoal.records import (
    InvalidName,
    Member,
    ModelVersion,
    UnknownVersion,
    resolve,
    split_model_name,
)

log = logging.getLogger(__name__)

#: Codes after which another member is tried.
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE})


class RouteError(Exception):
    """A failure with the gRPC status it maps to."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Route:
    tenant: str
    name: str
    version: ModelVersion
    via: str


def _version_field(version: int) -> bytes:
    return pb.InferRoutingHeader(model_version=str(version)).SerializeToString()


class Channels:
    """One lazily opened channel (and stub) per worker address (mTLS when configured)."""

    def __init__(self, settings: RouterSettings) -> None:
        self._settings = settings
        max_message_bytes = settings.max_message_bytes
        self._stubs: dict[str, InferenceStub] = {}
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            # Fail fast on a dead worker instead of waiting for the connect timeout.
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
        ]

    def stub(self, address: str) -> InferenceStub:
        stub = self._stubs.get(address)
        if stub is None:
            ch = tls.channel(address, self._settings, self._options)
            self._channels[address] = ch
            stub = self._stubs[address] = InferenceStub(ch)
        return stub

    async def close(self) -> None:
        for ch in self._channels.values():
            await ch.close()
        self._channels.clear()
        self._stubs.clear()


class Router:
    def __init__(
        self,
        view: ClusterView,
        settings: RouterSettings,
        metrics: RouterMetrics,
        policy: MemberPolicy | None = None,
        rng: random.Random | None = None,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.view = view
        self.settings = settings
        self.metrics = metrics
        self.policy = policy or WarmPrimaryPolicy(settings.spill_at)
        self.rng = rng or random.Random(settings.seed or None)
        self.ejector = Ejector(now, settings.eject_s)
        self.channels = Channels(settings)
        self.in_flight: defaultdict[str, int] = defaultdict(int)
        self.shadow: ShadowSender | None = None
        self.quotas = Quotas(
            now,
            settings.tenant_rate_limit,
            settings.tenant_max_in_flight,
            queue_s=settings.tenant_queue_s,
            max_queued=settings.tenant_max_queued,
            on_queued=metrics.quota_queued.inc,
        )
        self.load: LoadReporter | None = None

    # --- resolution ---------------------------------------------------------------------

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

    def candidates(self, tenant: str, name: str, version: ModelVersion) -> list[Member]:
        placement = self.view.placement(version.pool)
        if placement is None:
            raise RouteError(
                grpc.StatusCode.UNAVAILABLE, f"no workers in pool {version.pool!r} yet"
            )
        ranked, k = placement.ranked(tenant)
        live = self.view.live_worker_ids(version.pool)
        # A member whose lease is gone (or that is draining) is treated like an ejected one:
        # tried last, after every live member.
        down = _Unhealthy(live, self.ejector)
        return self.policy.choose(
            ranked, k, f"{tenant}/{name}:{version.version}", self.in_flight, down
        )

    # --- forwarding -----------------------------------------------------------------------

    async def forward(
        self,
        payload: bytes,
        members: list[Member],
        timeout: float,
        metadata: tuple[tuple[str, str], ...] | None = None,
    ) -> bytes:
        """Send ``payload`` to the first member that answers; bounded retries (see module)."""
        deadline = time.monotonic() + timeout
        attempts = members[: 1 + self.settings.retries]
        last: grpc.aio.AioRpcError | None = None
        for i, member in enumerate(attempts):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if i:
                self.metrics.retries.inc()
            self.in_flight[member.worker_id] += 1
            try:
                resp: bytes = await self.channels.stub(member.address).ModelInferRaw(
                    payload, timeout=remaining, metadata=metadata
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() in RETRYABLE:
                    self.ejector.failure(member.worker_id)
                elif not _busy(exc) or i + 1 == len(attempts):
                    raise RouteError(exc.code(), exc.details() or exc.code().name) from None
                last = exc
                continue
            finally:
                self.in_flight[member.worker_id] -= 1
            self.ejector.success(member.worker_id)
            return resp
        if last is None:
            raise RouteError(
                grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed before a worker answered"
            )
        raise RouteError(
            grpc.StatusCode.UNAVAILABLE,
            f"no worker answered after {len(attempts)} attempt(s): {last.details()}",
        )

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
            members = self.candidates(route.tenant, route.name, route.version)
            payload = raw + _version_field(route.version.version)
            resp = await self.forward(payload, members, deadline - time.monotonic())
        finally:
            if held:
                self.quotas.release(route.tenant)
        self._maybe_shadow(route, raw, resp)
        return resp

    # --- shadow ---------------------------------------------------------------------------

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

    async def send_shadow(self, job: ShadowJob) -> bytes:
        tenant, name = split_model_name(job.model)
        record = self.view.model(tenant, name)
        if record is None or job.shadow_version not in record.versions:
            raise RouteError(grpc.StatusCode.NOT_FOUND, f"shadow version {job.shadow_version} gone")
        version = record.versions[job.shadow_version]
        members = self.candidates(tenant, name, version)
        payload = job.request + _version_field(version.version)
        return await self.forward(payload, members, self.settings.default_timeout_s)

    async def close(self) -> None:
        await self.channels.close()


def _busy(exc: grpc.aio.AioRpcError) -> bool:
    """A worker's refusal that another member may not give (see ``RETRY_ELSEWHERE``)."""
    trailer = exc.trailing_metadata()
    return trailer is not None and all(item in tuple(trailer) for item in RETRY_ELSEWHERE)


class _Unhealthy:
    """Container view: a member is unhealthy when not live or currently ejected."""

    __slots__ = ("_ejector", "_live")

    def __init__(self, live: frozenset[str], ejector: Ejector) -> None:
        self._live = live
        self._ejector = ejector

    def __contains__(self, worker_id: object) -> bool:
        return worker_id not in self._live or worker_id in self._ejector
