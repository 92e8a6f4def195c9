"""A real Shoal cluster for the benchmarks, with models registered through the control plane.

``ShoalBench`` wraps ``shoal.cluster.LocalCluster`` (etcd, placement, workers and router as
real processes on free loopback ports) and registers artifacts the way a user does: the
``shoal.v1.Control/Register`` stream (a header, then the bytes in 1 MiB chunks), pointing the
``stable`` alias at the new version, in the ``cpu`` pool. ``warm()`` sends one request
through the router so the model is resident before a timed phase; ``worker_stats()`` reads a
worker's ``WorkerAdmin/Stats`` (resident bytes and models per tier).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from shoal.cluster import LocalCluster


@dataclass
class ShoalBench:
    data_dir: Path
    workers: int = 1
    shard_size: int = 1
    worker_env: Mapping[str, str] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    store: str = ""
    router_port: int = 0  # 0: a free port
    cluster: LocalCluster | None = None

    def start(self, timeout: float = 120.0) -> ShoalBench:
        self.cluster = LocalCluster(
            self.data_dir,
            workers=self.workers,
            shard_size=self.shard_size,
            env=dict(self.env),
            worker_env=dict(self.worker_env),
            store=self.store,
            router_port=self.router_port,
        ).start(timeout)
        return self

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()

    # --- addresses and pids -----------------------------------------------------------------

    @property
    def c(self) -> LocalCluster:
        if self.cluster is None:
            raise RuntimeError("cluster not started")
        return self.cluster

    @property
    def router_address(self) -> str:
        assert self.c.router is not None
        return self.c.router.address

    @property
    def router_pid(self) -> int:
        assert self.c.router is not None
        return self.c.router.proc.pid

    def worker_address(self, i: int = 0) -> str:
        return self.c.workers[i].address

    def worker_pid(self, i: int = 0) -> int:
        return self.c.workers[i].proc.pid

    @property
    def control_address(self) -> str:
        assert self.c.placement is not None
        return self.c.placement.address

    # --- control plane ----------------------------------------------------------------------

    def register(
        self, tenant: str, name: str, data: bytes, alias: str = "stable", pool: str = "cpu"
    ) -> int:
        """Register ``data`` as a new version of ``tenant/name``; return the version."""
        from shoal.pb import shoal_control_pb2 as cpb
        from shoal.pb import shoal_control_pb2_grpc as cgrpc

        def chunks() -> Iterator[Any]:
            header = cpb.RegisterHeader(tenant=tenant, name=name, alias=alias, pool=pool)
            yield cpb.RegisterChunk(header=header)
            for i in range(0, len(data), 1 << 20):
                yield cpb.RegisterChunk(data=data[i : i + (1 << 20)])

        with grpc.insecure_channel(self.control_address) as channel:
            resp = cgrpc.ControlStub(channel).Register(chunks(), timeout=120)
        return int(resp.version)

    def bulk_register(
        self,
        items: Sequence[tuple[str, str, bytes | str]],
        alias: str = "stable",
        pool: str = "cpu",
    ) -> list[int]:
        """Register many small models on one ``BulkRegister`` stream; return their versions.

        ``items`` are ``(tenant, name, data)``, where ``data`` is the artifact's bytes or, as a
        ``str``, the key of an artifact already in the store. Raises on the first failed item.
        """
        from shoal.pb import shoal_control_pb2 as cpb
        from shoal.pb import shoal_control_pb2_grpc as cgrpc

        def stream() -> Iterator[Any]:
            for seq, (tenant, name, data) in enumerate(items):
                header = cpb.RegisterHeader(tenant=tenant, name=name, alias=alias, pool=pool)
                if isinstance(data, str):
                    header.uri = data
                    yield cpb.BulkRegisterItem(seq=seq, header=header)
                else:
                    yield cpb.BulkRegisterItem(seq=seq, header=header, data=data)

        versions = [0] * len(items)
        with grpc.insecure_channel(self.control_address) as channel:
            for res in cgrpc.ControlStub(channel).BulkRegister(stream(), timeout=600):
                if not res.ok:
                    tenant, name, _ = items[res.seq]
                    raise RuntimeError(f"registering {tenant}/{name}: {res.code}: {res.error}")
                versions[res.seq] = int(res.result.version)
        return versions

    def worker_stats(self, i: int = 0) -> Any:
        """``shoal.v1.WorkerAdmin/Stats`` of worker ``i`` (a ``WorkerStatus`` message)."""
        from shoal.pb import shoal_control_pb2 as cpb
        from shoal.pb import shoal_control_pb2_grpc as cgrpc

        with grpc.insecure_channel(self.worker_address(i)) as channel:
            return cgrpc.WorkerAdminStub(channel).Stats(cpb.WorkerStatsRequest(), timeout=30)

    def load_model(self, tenant: str, name: str, i: int = 0, version: int = 0) -> Any:
        """``WorkerAdmin/LoadModel`` on worker ``i``: load without a prediction."""
        from shoal.pb import shoal_control_pb2 as cpb
        from shoal.pb import shoal_control_pb2_grpc as cgrpc

        req = cpb.LoadModelRequest(tenant=tenant, name=name, version=version)
        with grpc.insecure_channel(self.worker_address(i)) as channel:
            return cgrpc.WorkerAdminStub(channel).LoadModel(req, timeout=120)
