"""Calls from the placement service to workers' ``WorkerAdmin`` service, and what uses them.

A worker serves ``shoal.v1.WorkerAdmin`` on the same gRPC address as the inference protocol
(``WorkerInfo.address``). This module is the edge for that service: protobuf stays here, the
rest of the control plane sees ``WorkerLoad`` and exceptions.

* ``warm_up`` loads one model version on every given member concurrently, each under the
  same deadline, and raises ``FailedPrecondition`` naming every member that failed (so a
  promotion with ``--wait-loaded`` switches the alias only after all of them hold it).
* ``list_workers`` joins the etcd records with a ``Stats`` call per worker under a short
  deadline; a worker that does not answer in time is listed without load figures.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import cast

import grpc

from registry.errors import FailedPrecondition
from registry.lookup import RankedMember, live_workers
from shoal import tls
from shoal.pb import shoal_control_pb2 as pb
from shoal.pb import shoal_control_pb2_grpc as pb_grpc
from shoal.records import WorkerInfo
from shoal.settings import CommonSettings
from shoal.state import StateStore


@dataclass(frozen=True, slots=True)
class WorkerLoad:
    """What a worker's Stats call reports about its cache and traffic."""

    host_bytes: int
    gpu_bytes: int
    disk_bytes: int
    models_resident: int
    requests_per_s: float
    in_flight: int


@dataclass(frozen=True, slots=True)
class WorkerView:
    info: WorkerInfo
    load: WorkerLoad | None  # None: the worker did not answer Stats in time


class WorkerAdminClient:
    """One cached channel per worker address; ``close()`` closes them all."""

    def __init__(self, settings: CommonSettings | None = None) -> None:
        self._settings = settings or CommonSettings()
        self._stubs: dict[str, pb_grpc.WorkerAdminAsyncStub] = {}
        self._channels: dict[str, grpc.aio.Channel] = {}

    def _stub(self, address: str) -> pb_grpc.WorkerAdminAsyncStub:
        if address not in self._stubs:
            channel = tls.channel(address, self._settings)  # mTLS when configured
            self._channels[address] = channel
            # grpc is untyped here, so mypy cannot pick the stub's aio overload by itself.
            self._stubs[address] = cast(
                "pb_grpc.WorkerAdminAsyncStub", pb_grpc.WorkerAdminStub(channel)
            )
        return self._stubs[address]

    async def load_model(
        self, address: str, tenant: str, name: str, version: int, timeout: float
    ) -> None:
        """Load the version on the worker at ``address``; raises ``grpc.aio.AioRpcError``."""
        req = pb.LoadModelRequest(tenant=tenant, name=name, version=version)
        resp = await self._stub(address).LoadModel(req, timeout=timeout)
        if not resp.loaded:
            raise RuntimeError("the worker answered loaded=false")

    async def stats(self, address: str, timeout: float) -> WorkerLoad | None:
        try:
            s = await self._stub(address).Stats(pb.WorkerStatsRequest(), timeout=timeout)
        except grpc.aio.AioRpcError:
            return None
        return WorkerLoad(
            s.host_bytes,
            s.gpu_bytes,
            s.disk_bytes,
            s.models_resident,
            s.requests_per_s,
            s.in_flight,
        )

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
        self._stubs.clear()


async def warm_up(
    client: WorkerAdminClient,
    members: list[RankedMember],
    tenant: str,
    name: str,
    version: int,
    timeout: float,
) -> None:
    """Load ``tenant/name`` v``version`` on every member; raise naming each failure."""
    if not members:
        raise FailedPrecondition(f"no live worker serves tenant {tenant}: nothing to warm")

    async def one(m: RankedMember) -> str | None:
        try:
            await client.load_model(m.address, tenant, name, version, timeout)
        except grpc.aio.AioRpcError as exc:
            return f"{m.worker_id} ({m.address}): {exc.code().name}: {exc.details()}"
        except RuntimeError as exc:
            return f"{m.worker_id} ({m.address}): {exc}"
        return None

    failures = [f for f in await asyncio.gather(*(one(m) for m in members)) if f]
    if failures:
        raise FailedPrecondition(
            f"warm-up of {tenant}/{name} version {version} failed on "
            f"{len(failures)} of {len(members)} members; alias unchanged: " + "; ".join(failures)
        )


async def list_workers(
    store: StateStore, client: WorkerAdminClient, pool: str, timeout: float
) -> list[WorkerView]:
    """Every registered worker (of ``pool``, or all), with load when it answers in time."""
    infos = sorted((await live_workers(store, pool)).values(), key=lambda w: (w.pool, w.worker_id))
    loads = await asyncio.gather(*(client.stats(w.address, timeout) for w in infos))
    return [WorkerView(info, load) for info, load in zip(infos, loads, strict=True)]
