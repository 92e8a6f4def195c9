"""A real multi-process cluster (etcd, placement, 3 workers, router) for end-to-end tests,
and a synchronous control-plane client to register models into it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from shoal import modelgen
from shoal.cluster import LocalCluster
from shoal.pb import shoal_control_pb2 as cpb
from shoal.pb import shoal_control_pb2_grpc as cgrpc

#: Short leases and debounce so membership changes show up within seconds.
FAST = {"SHOAL_LEASE_TTL": "2", "SHOAL_DEBOUNCE_S": "0.3"}


class Control:
    """Synchronous client of the shoal.v1 control plane (tests only)."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.stub = cgrpc.ControlStub(self.channel)

    def register(self, tenant: str, name: str, data: bytes, alias: str = "", **kw: Any) -> int:
        def chunks() -> Iterator[cpb.RegisterChunk]:
            yield cpb.RegisterChunk(
                header=cpb.RegisterHeader(tenant=tenant, name=name, alias=alias, **kw)
            )
            for i in range(0, len(data), 1 << 20):
                yield cpb.RegisterChunk(data=data[i : i + (1 << 20)])

        return int(self.stub.Register(chunks(), timeout=60).version)

    def alias(
        self, tenant: str, name: str, alias: str, version: int, wait_loaded: bool = False
    ) -> cpb.ModelRecord:
        return self.stub.SetAlias(
            cpb.SetAliasRequest(
                tenant=tenant, name=name, alias=alias, version=version, wait_loaded=wait_loaded
            ),
            timeout=60,
        )

    def traffic(self, tenant: str, name: str, split: dict[int, int]) -> cpb.ModelRecord:
        return self.stub.SetTraffic(
            cpb.SetTrafficRequest(tenant=tenant, name=name, percent=split), timeout=30
        )

    def shadow(self, tenant: str, name: str, version: int, percent: float) -> cpb.ModelRecord:
        return self.stub.SetShadow(
            cpb.SetShadowRequest(tenant=tenant, name=name, version=version, percent=percent),
            timeout=30,
        )

    def model(self, tenant: str, name: str) -> cpb.ModelRecord:
        return self.stub.GetModel(cpb.GetModelRequest(tenant=tenant, name=name), timeout=30)

    def close(self) -> None:
        self.channel.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(
        tmp_path_factory.mktemp("cluster"),
        workers=3,
        shard_size=2,
        env=FAST,
        worker_env={"SHOAL_HOST_BUDGET": "256MiB", "SHOAL_DRAIN_GRACE_S": "5"},
    )
    c.start()
    yield c
    c.stop()


@pytest.fixture(scope="module")
def control(cluster: LocalCluster) -> Iterator[Control]:
    assert cluster.placement is not None
    ctl = Control(cluster.placement.address)
    yield ctl
    ctl.close()


@pytest.fixture(scope="session")
def data30() -> tuple[np.ndarray, np.ndarray]:
    """The breast-cancer table (30 features) that ships with scikit-learn."""
    return modelgen.dataset(real=True)


def router_url(cluster: LocalCluster) -> str:
    assert cluster.router is not None
    return cluster.router.address


def shadow_log(cluster: LocalCluster) -> Path:
    return cluster.data_dir / "shadow" / "shadow.jsonl"
