"""Forwarding: which members of a tenant's shard get a request, in which order, and the
bounded retries over them.

``Forwarder.forward`` sends the request bytes to the first candidate that answers. A member
that answers UNAVAILABLE (or cannot be reached) is ejected for a short time and the next
candidate is tried, at most ``retries`` more times and never past the caller's deadline. A
member that refuses with the ``shoal-retry: elsewhere`` trailer (the model's concurrency line
is full on that worker) is not ejected, but the next candidate is tried the same way.
INVALID_ARGUMENT, NOT_FOUND and every other status are returned as they are.

``candidates`` orders the shard with the member policy (``router.choose``): members whose
lease is gone or that are draining count as unhealthy, like ejected ones, and come last.
``send_shadow`` forwards a shadow copy (``router.shadow``) to the shadow version's members.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable

import grpc

from router.choose import Ejector, MemberPolicy, WarmPrimaryPolicy
from router.errors import RouteError
from router.metrics import RouterMetrics
from router.settings import RouterSettings
from router.shadow import ShadowJob
from router.view import ClusterView
from shoal import tls
from shoal.oip import RETRY_ELSEWHERE, InferenceStub
from shoal.pb import shoal_inference_pb2 as pb
from shoal.records import Member, ModelVersion, split_model_name

#: Codes after which another member is tried.
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE})


def version_field(version: int) -> bytes:
    """``model_version`` as an encoded field 2 of a ModelInferRequest: appended to a request,
    it overrides the version the client sent (protobuf keeps the last value of a scalar)."""
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


class Forwarder:
    """Member choice and forwarding with retries (see the module docstring)."""

    def __init__(
        self,
        view: ClusterView,
        settings: RouterSettings,
        metrics: RouterMetrics,
        policy: MemberPolicy | None = None,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.view = view
        self.settings = settings
        self.metrics = metrics
        self.policy = policy or WarmPrimaryPolicy(settings.spill_at)
        self.ejector = Ejector(now, settings.eject_s)
        self.channels = Channels(settings)
        self.in_flight: defaultdict[str, int] = defaultdict(int)

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

    async def send_shadow(self, job: ShadowJob) -> bytes:
        """Forward a shadow copy to a member of the shadow version (``ShadowSender``'s send)."""
        tenant, name = split_model_name(job.model)
        record = self.view.model(tenant, name)
        if record is None or job.shadow_version not in record.versions:
            raise RouteError(grpc.StatusCode.NOT_FOUND, f"shadow version {job.shadow_version} gone")
        version = record.versions[job.shadow_version]
        members = self.candidates(tenant, name, version)
        payload = job.request + version_field(version.version)
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
