"""The ``shoal.v1.Control`` gRPC servicer: translate, call the core, translate back.

Each method converts its request (``registry.convert``), calls the registry or a lookup, and
converts the answer. Failures are mapped to status codes by ``registry.errors.grpc_status``
only (in ``_edge``), never here method by method.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from registry import convert, rules
from registry.errors import FailedPrecondition, InvalidArgument, NotFound, TooLarge, grpc_status
from registry.facade import Registry
from registry.lookup import tenant_placement
from registry.registration import Registered
from registry.workers import WorkerAdminClient, list_workers, warm_up
from shoal.pb import shoal_control_pb2 as pb
from shoal.pb import shoal_control_pb2_grpc as pb_grpc
from shoal.records_pb import record_to_proto
from shoal.state import StateStore

log = logging.getLogger(__name__)

R = TypeVar("R")

#: Most BulkRegister items registered together: one ``register_many`` call, so at most one
#: etcd transaction (128 models) per batch and validation of a whole batch in parallel.
BULK_BATCH = 128
Handler = Callable[[Any, Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[R]]


def _edge(fn: Handler[R]) -> Handler[R]:
    """Run a unary handler; turn any exception into a status via ``grpc_status``."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> R:
        try:
            return await fn(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            code, detail = grpc_status(exc)
            if code == grpc.StatusCode.INTERNAL:
                log.exception("%s failed", fn.__name__)
            await context.abort(code, detail)
            raise  # unreachable: abort raises

    return wrapper


class ControlService(pb_grpc.ControlServicer):
    """Hosts the registry and placement lookups on gRPC (see module docstring)."""

    def __init__(
        self,
        registry: Registry,
        store: StateStore,
        workers: WorkerAdminClient,
        warm_timeout_s: float = 60.0,
        stats_timeout_s: float = 0.5,
    ) -> None:
        self.registry = registry
        self.store = store
        self.workers = workers
        self.warm_timeout_s = warm_timeout_s
        self.stats_timeout_s = stats_timeout_s

    # --- registration ---------------------------------------------------------------------

    @_edge
    async def Register(
        self, request_iterator: AsyncIterator[pb.RegisterChunk], context: Any
    ) -> pb.RegisterResponse:
        """Header first, then data chunks; the size limit is enforced while receiving."""
        header: pb.RegisterHeader | None = None
        data = bytearray()
        limit = self.registry.max_artifact_bytes
        async for chunk in request_iterator:
            part = chunk.WhichOneof("part")
            if header is None:
                if part != "header":
                    raise InvalidArgument("the first message of Register must be the header")
                header = chunk.header
                continue
            if part != "data":
                raise InvalidArgument("Register takes one header, then data chunks")
            if len(data) + len(chunk.data) > limit:
                raise TooLarge(f"artifact exceeds the limit of {limit} bytes")
            data += chunk.data
        if header is None:
            raise InvalidArgument("Register received no header")
        spec = convert.spec_from_proto(header)
        if header.uri:
            if data:
                raise InvalidArgument("give either a uri or artifact bytes, not both")
            result = await self.registry.register_uri(spec, header.uri)
        else:
            result = await self.registry.register(spec, bytes(data))
        return convert.registered_to_proto(result)

    async def BulkRegister(
        self, request_iterator: AsyncIterator[pb.BulkRegisterItem], context: Any
    ) -> AsyncIterator[pb.BulkRegisterResult]:
        """One result per item, echoing ``seq``; one item's failure does not stop the rest.

        Items are taken in batches of what has arrived (up to ``BULK_BATCH``, never waiting
        for more), so a busy stream is written to etcd in few transactions
        (``Registry.register_many``) while a trickle still gets prompt answers. The reader
        runs ahead by at most ``2 * BULK_BATCH`` items (flow control back to the client).
        Artifacts that retention queued during the stream are collected when it ends.
        A client that goes away mid-stream cancels the batch in hand: each transaction has
        then landed whole or not at all, and no record names an artifact not yet uploaded.
        """
        queue: asyncio.Queue[pb.BulkRegisterItem | None] = asyncio.Queue(maxsize=2 * BULK_BATCH)

        async def read() -> None:
            try:
                async for item in request_iterator:
                    await queue.put(item)
            finally:
                await queue.put(None)

        reader = asyncio.create_task(read())
        try:
            done = False
            while not done:
                first = await queue.get()
                if first is None:
                    break
                batch = [first]
                while len(batch) < BULK_BATCH and not queue.empty():
                    item = queue.get_nowait()
                    if item is None:
                        done = True
                        break
                    batch.append(item)
                for result in await self._bulk(batch):
                    yield result
            await reader  # surfaces a broken request stream
            await self._flush_gc()
        finally:
            reader.cancel()

    async def _flush_gc(self) -> None:
        try:
            await self.registry.flush_gc()
        except Exception:
            # Registrations are done and answered; garbage left behind is retried next time.
            log.warning("artifact garbage collection failed", exc_info=True)

    async def _bulk(self, batch: list[pb.BulkRegisterItem]) -> list[pb.BulkRegisterResult]:
        items = [
            (convert.spec_from_proto(it.header), it.header.uri or bytes(it.data)) for it in batch
        ]
        try:
            outcomes: list[Registered | Exception] = await self.registry.register_many(items)
        except Exception as exc:  # e.g. etcd down while reading the batch's records
            outcomes = [exc] * len(items)
        results = []
        for it, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, Exception):
                code, detail = grpc_status(outcome)
                if code == grpc.StatusCode.INTERNAL:
                    log.error("bulk item %d failed: %r", it.seq, outcome)
                results.append(
                    pb.BulkRegisterResult(seq=it.seq, ok=False, error=detail, code=code.name)
                )
            else:
                results.append(
                    pb.BulkRegisterResult(
                        seq=it.seq, ok=True, result=convert.registered_to_proto(outcome)
                    )
                )
        return results

    # --- registry -------------------------------------------------------------------------

    @_edge
    async def ListModels(
        self, request: pb.ListModelsRequest, context: Any
    ) -> pb.ListModelsResponse:
        page = await self.registry.list_models(
            request.tenant, request.page_size, request.page_token
        )
        return pb.ListModelsResponse(
            models=[record_to_proto(r) for r in page.models],
            next_page_token=page.next_page_token,
        )

    @_edge
    async def GetModel(self, request: pb.GetModelRequest, context: Any) -> pb.ModelRecord:
        return record_to_proto(await self.registry.get(request.tenant, request.name))

    @_edge
    async def SetAlias(self, request: pb.SetAliasRequest, context: Any) -> pb.ModelRecord:
        t, n = request.tenant, request.name
        if request.wait_loaded:
            await self._warm(t, n, request.version, request.warm_timeout_s or self.warm_timeout_s)
        record = await self.registry.set_alias(t, n, request.alias, request.version)
        return record_to_proto(record)

    async def _warm(self, tenant: str, name: str, version: int, timeout: float) -> None:
        """Load the version on the members the router would use in the version's pool.

        The router sends ``tenant/name:version`` to a "primary" picked by hash among the first
        k ranked members (the gateway's policy, ``shoal.shard.member_order``), and on to the
        next ones when it is down or busy. ``serving()`` is the first k members that are up, so
        it holds every member the router can pick while any of the first k is up: warming all
        of them covers the primary whatever the hash, and the spill-over members too.
        """
        record = await self.registry.get(tenant, name)
        rules.require_version(record, version)
        pool = record.versions[version].pool
        try:
            (view,) = await tenant_placement(self.store, tenant, pool)
        except NotFound as exc:
            raise FailedPrecondition(f"cannot warm {tenant}/{name} v{version}: {exc}") from None
        await warm_up(self.workers, view.serving(), tenant, name, version, timeout)

    @_edge
    async def DeleteAlias(self, request: pb.DeleteAliasRequest, context: Any) -> pb.ModelRecord:
        record = await self.registry.delete_alias(request.tenant, request.name, request.alias)
        return record_to_proto(record)

    @_edge
    async def SetTraffic(self, request: pb.SetTrafficRequest, context: Any) -> pb.ModelRecord:
        record = await self.registry.set_traffic(
            request.tenant, request.name, dict(request.percent)
        )
        return record_to_proto(record)

    @_edge
    async def SetShadow(self, request: pb.SetShadowRequest, context: Any) -> pb.ModelRecord:
        version, percent = convert.shadow_from_proto(request)
        record = await self.registry.set_shadow(request.tenant, request.name, version, percent)
        return record_to_proto(record)

    @_edge
    async def DeleteVersions(
        self, request: pb.DeleteVersionsRequest, context: Any
    ) -> pb.DeleteVersionsResponse:
        deleted, record = await self.registry.delete_versions(
            request.tenant, request.name, request.keep_last
        )
        return pb.DeleteVersionsResponse(deleted=deleted, model=record_to_proto(record))

    # --- placement and workers ------------------------------------------------------------

    @_edge
    async def GetPlacement(
        self, request: pb.PlacementRequest, context: Any
    ) -> pb.PlacementResponse:
        pools = await tenant_placement(self.store, request.tenant, request.pool)
        return convert.placement_to_proto(request.tenant, pools)

    @_edge
    async def ListWorkers(
        self, request: pb.ListWorkersRequest, context: Any
    ) -> pb.ListWorkersResponse:
        views = await list_workers(self.store, self.workers, request.pool, self.stats_timeout_s)
        return pb.ListWorkersResponse(workers=[convert.worker_to_proto(v) for v in views])
