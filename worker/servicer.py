"""gRPC edge of the worker: the Open Inference Protocol and ``shoal.v1.WorkerAdmin``.

Handlers only translate (``worker.convert``) and call the core (``worker.dataplane``). This is
the one place that maps ``WorkerError`` codes to gRPC status codes; anything unexpected is
logged and answered INTERNAL. Every RPC is counted by method and code and timed.

ModelInfer is bound raw (bytes in, bytes out): the worker parses the request itself
(``parse_infer_request``), so undecodable bytes are INVALID_ARGUMENT with a reason rather than
the UNKNOWN status gRPC's deserializer gives. Oversized messages are refused by gRPC itself
(``max_receive_message_length`` = ``SHOAL_MAX_REQUEST_BYTES``) with RESOURCE_EXHAUSTED. The
call's deadline (``context.time_remaining()``) becomes the core's monotonic ``deadline``; an
RPC that gRPC cancels because its deadline passed is counted as DEADLINE_EXCEEDED.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from shoal import oip
from shoal.oip import RETRY_ELSEWHERE
from shoal.pb import shoal_control_pb2 as cpb
from shoal.pb import shoal_control_pb2_grpc as cpb_grpc
from shoal.pb import shoal_inference_pb2 as pb
from worker.convert import (
    infer_response_to_proto,
    model_metadata_to_proto,
    parse_infer_request,
)
from worker.dataplane import Dataplane
from worker.errors import Code, WorkerError
from worker.metrics import WorkerMetrics
from worker.types import Stats

log = logging.getLogger(__name__)

T = TypeVar("T")

GRPC_CODE: dict[Code, grpc.StatusCode] = {
    Code.OK: grpc.StatusCode.OK,
    Code.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    Code.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Code.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    Code.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    Code.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Code.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    Code.INTERNAL: grpc.StatusCode.INTERNAL,
    Code.CANCELLED: grpc.StatusCode.CANCELLED,
}

SERVER_NAME = "shoal-worker"
SERVER_VERSION = "0.1.0"


class Edge:
    """Counts, times and maps errors for every handler."""

    def __init__(self, metrics: WorkerMetrics) -> None:
        self._metrics = metrics
        self.in_flight = 0
        self.total = 0

    async def call(
        self, method: str, context: grpc.aio.ServicerContext, work: Callable[[], Awaitable[T]]
    ) -> T:
        m = self._metrics
        started = time.perf_counter()
        self.in_flight += 1
        self.total += 1
        m.requests_in_flight.inc()
        code = Code.OK
        try:
            return await work()
        except asyncio.CancelledError:  # the client went away, its deadline passed, or we stop
            remaining = context.time_remaining()
            expired = remaining is not None and remaining <= 0
            code = Code.DEADLINE_EXCEEDED if expired else Code.CANCELLED
            raise
        except WorkerError as exc:
            code = exc.code
            trailer = RETRY_ELSEWHERE if exc.retry_elsewhere else ()
            await context.abort(GRPC_CODE[code], exc.message, trailer)
            raise  # abort raises; unreachable
        except Exception as exc:
            if isinstance(exc, grpc.aio.AbortError):
                raise
            code = Code.INTERNAL
            log.exception("%s failed", method)
            await context.abort(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")
            raise
        finally:
            self.in_flight -= 1
            m.requests_in_flight.dec()
            m.child(m.requests, method, code.value).inc()
            m.child(m.latency, method).observe(time.perf_counter() - started)


def inference_handler(
    dp: Dataplane, edge: Edge, is_ready: Callable[[], bool]
) -> grpc.GenericRpcHandler:
    """The Open Inference Protocol methods, bound at Triton's/KServe's paths."""

    async def server_live(_req: pb.ServerLiveRequest, _ctx: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(_req: pb.ServerReadyRequest, _ctx: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=is_ready())

    async def server_metadata(
        _req: pb.ServerMetadataRequest, _ctx: Any
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=SERVER_VERSION, extensions=[])

    async def model_ready(req: pb.ModelReadyRequest, ctx: Any) -> pb.ModelReadyResponse:
        async def work() -> pb.ModelReadyResponse:
            return pb.ModelReadyResponse(ready=await dp.model_ready(req.name, req.version))

        return await edge.call("ModelReady", ctx, work)

    async def model_metadata(req: pb.ModelMetadataRequest, ctx: Any) -> pb.ModelMetadataResponse:
        async def work() -> pb.ModelMetadataResponse:
            return model_metadata_to_proto(await dp.model_metadata(req.name, req.version))

        return await edge.call("ModelMetadata", ctx, work)

    async def model_infer(raw: bytes, ctx: grpc.aio.ServicerContext) -> bytes:
        remaining = ctx.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining

        async def work() -> bytes:
            result = await dp.infer(parse_infer_request(raw), deadline)
            return bytes(infer_response_to_proto(result).SerializeToString())

        return await edge.call("ModelInfer", ctx, work)

    return oip.generic_handler(
        {
            "ServerLive": server_live,
            "ServerReady": server_ready,
            "ServerMetadata": server_metadata,
            "ModelReady": model_ready,
            "ModelMetadata": model_metadata,
            "ModelInfer": model_infer,
        },
        raw=frozenset({"ModelInfer"}),
    )


def stats_to_proto(s: Stats) -> cpb.WorkerStatus:
    return cpb.WorkerStatus(
        worker_id=s.worker_id,
        pool=s.pool,
        address=s.address,
        zone=s.zone,
        device=s.device,
        ready=s.ready,
        draining=s.draining,
        started_at=s.started_at,
        host_budget=s.budgets.get("host", 0),
        gpu_budget=s.budgets.get("gpu", 0),
        disk_budget=s.budgets.get("disk", 0),
        host_bytes=s.resident_bytes.get("host", 0),
        gpu_bytes=s.resident_bytes.get("gpu", 0),
        disk_bytes=s.resident_bytes.get("disk", 0),
        models_resident=s.models_resident,
        requests_per_s=s.requests_per_s,
        in_flight=s.in_flight,
        metrics_address=s.metrics_address,
    )


class AdminServicer(cpb_grpc.WorkerAdminServicer):
    """``shoal.v1.WorkerAdmin``: warm a version (promotion), report status."""

    def __init__(self, dp: Dataplane, edge: Edge, stats: Callable[[], Stats]) -> None:
        self._dp = dp
        self._edge = edge
        self._stats = stats

    async def LoadModel(
        self, request: cpb.LoadModelRequest, context: grpc.aio.ServicerContext
    ) -> cpb.LoadModelResponse:
        async def work() -> cpb.LoadModelResponse:
            version = str(request.version) if request.version > 0 else ""
            out = await self._dp.load(f"{request.tenant}/{request.name}", version)
            return cpb.LoadModelResponse(
                loaded=out.loaded,
                was_resident=out.was_resident,
                tier=out.tier,
                load_seconds=out.load_seconds,
            )

        return await self._edge.call("LoadModel", context, work)

    async def Stats(
        self, request: cpb.WorkerStatsRequest, context: grpc.aio.ServicerContext
    ) -> cpb.WorkerStatus:
        return stats_to_proto(self._stats())
