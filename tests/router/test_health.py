"""The gateway's grpc.health.v1 (what Kubernetes' gRPC probes call), readiness and draining,
with the real grpc health client against a router in this process."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2 as hpb
from grpc_health.v1 import health_pb2_grpc as hgrpc

from router.app import RouterApp
from router.settings import RouterSettings
from shoal.oip import InferenceStub
from shoal.pb import shoal_inference_pb2 as pb
from shoal.state import MemoryStore
from tests.router.test_forwarding import _request, _until, cluster

SERVING = hpb.HealthCheckResponse.SERVING
NOT_SERVING = hpb.HealthCheckResponse.NOT_SERVING


async def test_check_serves_the_server_and_the_inference_service(tmp_path: Path) -> None:
    async with cluster(tmp_path, aliases={"stable": 1}) as c:
        health = hgrpc.HealthStub(c.channel)
        for service in ("", "inference.GRPCInferenceService"):
            resp = await health.Check(hpb.HealthCheckRequest(service=service), timeout=5)
            assert resp.status == SERVING
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await health.Check(hpb.HealthCheckRequest(service="nope"), timeout=5)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert err.value.details() == "unknown service nope"


async def test_watch_follows_a_drain_to_not_serving_and_ends(tmp_path: Path) -> None:
    async with cluster(tmp_path, aliases={"stable": 1}) as c:
        stream = hgrpc.HealthStub(c.channel).Watch(hpb.HealthCheckRequest(service=""))
        first = await stream.read()
        assert first.status == SERVING
        stopping = asyncio.ensure_future(c.app.stop(2.0))
        second = await asyncio.wait_for(stream.read(), 5)
        assert second.status == NOT_SERVING
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await asyncio.wait_for(stream.read(), 5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        await stopping


async def test_not_serving_and_not_ready_until_the_view_is_read(tmp_path: Path) -> None:
    """Bound before its first etcd read (a store that never answers), the gateway answers
    health NOT_SERVING and ServerReady false, and still answers ServerLive."""
    store = MemoryStore()
    store.available = False  # every call raises StateUnavailable until it is back
    app = RouterApp(
        RouterSettings(port=0, rest_port=0, metrics_port=-1, data_dir=tmp_path), store=store
    )
    starting = asyncio.ensure_future(app.start())
    try:
        await _until(lambda: app.gateway.address is not None)
        async with grpc.aio.insecure_channel(app.gateway.address or "") as ch:
            health = hgrpc.HealthStub(ch)
            resp = await health.Check(hpb.HealthCheckRequest(), timeout=5)
            assert resp.status == NOT_SERVING
            stub = InferenceStub(ch)
            assert (await stub.ServerReady(pb.ServerReadyRequest(), timeout=5)).ready is False
            assert (await stub.ServerLive(pb.ServerLiveRequest(), timeout=5)).live is True
            store.available = True
            await asyncio.wait_for(starting, 20)
            resp = await health.Check(hpb.HealthCheckRequest(), timeout=5)
            assert resp.status == SERVING
            assert (await stub.ServerReady(pb.ServerReadyRequest(), timeout=5)).ready is True
    finally:
        if not starting.done():
            starting.cancel()
        await app.stop(0.0)


async def test_in_flight_requests_finish_during_a_drain(tmp_path: Path) -> None:
    async with cluster(tmp_path, aliases={"stable": 1}) as c:
        for w in c.workers:
            w.delay = 0.5
        calls = [asyncio.ensure_future(c.infer(_request())) for _ in range(4)]
        await _until(lambda: sum(len(w.seen) for w in c.workers) == 4)
        await c.app.stop(5.0)
        answers = await asyncio.gather(*calls)
        assert [a.model_version for a in answers] == ["1"] * 4
        # Stopped: nothing listens any more.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await c.infer(_request())
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
