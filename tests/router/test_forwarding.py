"""Router wiring over real gRPC: version pinning by appended field, retries, no-retry codes,
shadow copies. Workers here are small in-process gRPC servers that echo what they received
(end-to-end tests with real worker processes live in tests/e2e)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import numpy as np
import pytest

from router.core import Router
from router.errors import RouteError
from router.metrics import RouterMetrics
from router.settings import RouterSettings
from router.shadow import RotatingJsonl, ShadowSender
from router.view import ClusterView
from shoal.artifacts import Signature, TensorSpec
from shoal.oip import RETRY_ELSEWHERE, generic_handler
from shoal.pb import shoal_inference_pb2 as pb
from shoal.records import (
    CLUSTER,
    ClusterConfig,
    Member,
    ModelRecord,
    ModelVersion,
    PoolSnapshot,
    ShadowConfig,
    WorkerInfo,
    model_key,
    placement_key,
    worker_key,
)
from shoal.state import MemoryStore

SIG = Signature(
    (TensorSpec("input__0", "FP32", (-1, 2)),), (TensorSpec("output__0", "FP32", (-1,)),)
)


class EchoWorker:
    """Answers ModelInfer with the version it was asked for and its own id as the output."""

    def __init__(self, worker_id: str, fail_with: grpc.StatusCode | None = None) -> None:
        self.worker_id = worker_id
        self.fail_with = fail_with
        self.busy = False  # refuse like a worker whose model line is full
        self.seen: list[pb.ModelInferRequest] = []
        self.server: grpc.aio.Server | None = None
        self.address = ""

    async def infer(
        self, req: pb.ModelInferRequest, ctx: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        self.seen.append(req)
        if self.busy:
            await ctx.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED, f"{self.worker_id} is busy", RETRY_ELSEWHERE
            )
        if self.fail_with is not None:
            await ctx.abort(self.fail_with, f"{self.worker_id} says no")
        resp = pb.ModelInferResponse(model_name=req.model_name, model_version=req.model_version)
        resp.outputs.add(name="output__0", datatype="FP32", shape=[1])
        resp.raw_output_contents.append(np.float32([int(self.worker_id[1:])]).tobytes())
        return resp

    async def start(self) -> None:
        self.server = grpc.aio.server()
        self.server.add_generic_rpc_handlers((generic_handler({"ModelInfer": self.infer}),))
        port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        self.address = f"127.0.0.1:{port}"

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(0)


def _version(v: int) -> ModelVersion:
    return ModelVersion(v, f"artifacts/{v}", "xgboost", "xgboost-json", "cpu", "0" * 64, 10, SIG)


@asynccontextmanager
async def cluster(
    tmp_path: Path, n: int = 3, shard_size: int = 2, **record_kw: object
) -> AsyncIterator[tuple[Router, list[EchoWorker], MemoryStore]]:
    store = MemoryStore()
    workers = [EchoWorker(f"w{i}") for i in range(n)]
    for w in workers:
        await w.start()
        await store.put(
            worker_key("cpu", w.worker_id),
            WorkerInfo(w.worker_id, "cpu", w.address, ready=True).encode(),
        )
    await store.put(CLUSTER, ClusterConfig("ab" * 16, shard_size).encode())
    members = tuple(Member(w.worker_id, w.address) for w in workers)
    await store.put(placement_key("cpu"), PoolSnapshot("cpu", 1, members, shard_size).encode())
    rec = ModelRecord("acme", "churn", {1: _version(1), 2: _version(2)}, **record_kw)  # type: ignore[arg-type]
    await store.put(model_key("acme", "churn"), rec.encode())
    view = ClusterView(store)
    await view.start()
    settings = RouterSettings(retries=2, eject_s=30.0, data_dir=tmp_path)
    metrics = RouterMetrics()
    router = Router(view, settings, metrics)
    try:
        yield router, workers, store
    finally:
        await router.close()
        await view.stop()
        for w in workers:
            await w.stop()


def _request(version: str = "") -> bytes:
    req = pb.ModelInferRequest(model_name="acme/churn", model_version=version, id="r1")
    req.inputs.add(name="input__0", datatype="FP32", shape=[1, 2])
    req.raw_input_contents.append(np.float32([[1, 2]]).tobytes())
    return req.SerializeToString()


async def test_version_is_pinned_without_reencoding_tensors(tmp_path: Path) -> None:
    async with cluster(tmp_path, aliases={"stable": 1, "canary": 2}) as (router, workers, _):
        raw = _request()
        resp = pb.ModelInferResponse.FromString(await router.infer(raw, 5.0))
        assert resp.model_version == "1"  # stable
        resp = pb.ModelInferResponse.FromString(await router.infer(_request("canary"), 5.0))
        assert resp.model_version == "2"
        seen = [r for w in workers for r in w.seen]
        assert seen[0].raw_input_contents[0] == np.float32([[1, 2]]).tobytes()
        assert seen[0].id == "r1"


async def test_same_model_goes_to_one_primary(tmp_path: Path) -> None:
    async with cluster(tmp_path, n=5, aliases={"stable": 1}) as (router, workers, _):
        for _ in range(20):
            await router.infer(_request(), 5.0)
        assert sorted(len(w.seen) for w in workers) == [0, 0, 0, 0, 20]


async def test_unavailable_member_is_retried_and_ejected(tmp_path: Path) -> None:
    async with cluster(tmp_path, n=3, aliases={"stable": 1}) as (router, workers, _):
        await router.infer(_request(), 5.0)
        (primary,) = [w for w in workers if w.seen]
        await primary.stop()  # connection refused from now on
        for _ in range(5):
            resp = pb.ModelInferResponse.FromString(await router.infer(_request(), 5.0))
            assert resp.model_version == "1"
        # Ejected after the first failure: later requests go straight to a live member.
        assert router.metrics.registry.get_sample_value("shoal_router_retries_total") == 1


async def test_invalid_argument_and_not_found_are_not_retried(tmp_path: Path) -> None:
    async with cluster(tmp_path, n=3, aliases={"stable": 1}) as (router, workers, _):
        for w in workers:
            w.fail_with = grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(RouteError) as err:
            await router.infer(_request(), 5.0)
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert sum(len(w.seen) for w in workers) == 1
        with pytest.raises(RouteError) as err:
            await router.infer(_request("7"), 5.0)
        assert err.value.code == grpc.StatusCode.NOT_FOUND and "version 7" in err.value.message
        with pytest.raises(RouteError) as err:
            router.route("nobody/none", "")
        assert err.value.code == grpc.StatusCode.NOT_FOUND and "nobody/none" in err.value.message
        with pytest.raises(RouteError) as err:
            await router.infer(b"\xff\xff\xff", 5.0)
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_busy_member_is_passed_over_but_not_ejected(tmp_path: Path) -> None:
    async with cluster(tmp_path, n=3, aliases={"stable": 1}) as (router, workers, _):
        await router.infer(_request(), 5.0)
        (primary,) = [w for w in workers if w.seen]
        primary.busy = True
        resp = pb.ModelInferResponse.FromString(await router.infer(_request(), 5.0))
        assert resp.raw_output_contents[0] != np.float32([int(primary.worker_id[1:])]).tobytes()
        assert len(primary.seen) == 2  # tried first, refused, and the next member answered
        primary.busy = False
        await router.infer(_request(), 5.0)
        assert len(primary.seen) == 3  # still the primary: a busy answer does not eject
        for w in workers:
            w.busy = True
        with pytest.raises(RouteError) as err:
            await router.infer(_request(), 5.0)
        assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "busy" in err.value.message
        for w in workers:  # a refusal without the trailer (a size limit, say) is final
            w.busy, w.fail_with = False, grpc.StatusCode.RESOURCE_EXHAUSTED
        before = sum(len(w.seen) for w in workers)
        with pytest.raises(RouteError) as err:
            await router.infer(_request(), 5.0)
        assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert sum(len(w.seen) for w in workers) == before + 1


async def test_all_unavailable_gives_unavailable_within_budget(tmp_path: Path) -> None:
    async with cluster(tmp_path, n=4, aliases={"stable": 1}) as (router, workers, _):
        for w in workers:
            w.fail_with = grpc.StatusCode.UNAVAILABLE
        with pytest.raises(RouteError) as err:
            await router.infer(_request(), 5.0)
        assert err.value.code == grpc.StatusCode.UNAVAILABLE
        assert sum(len(w.seen) for w in workers) == 3  # 1 + retries


async def test_shadow_copies_are_sent_and_logged(tmp_path: Path) -> None:
    async with cluster(tmp_path, aliases={"stable": 1}, shadow=ShadowConfig(2, 100.0)) as (
        router,
        workers,
        _,
    ):
        log = RotatingJsonl(tmp_path / "shadow.jsonl", 1 << 20, 1)
        sender = ShadowSender(router.forwarder.send_shadow, router.metrics, log, queue_size=4)
        router = Router(
            router.view, router.settings, router.metrics, forwarder=router.forwarder, shadow=sender
        )
        sender.start()
        for _ in range(3):
            resp = pb.ModelInferResponse.FromString(await router.infer(_request(), 5.0))
            assert resp.model_version == "1"
        await asyncio.wait_for(sender.drain(), 10)
        await sender.stop()
        reg = router.metrics.registry
        assert (
            reg.get_sample_value("shoal_router_shadow_compared_total", {"model": "acme/churn"}) == 3
        )
        versions = sorted(r.model_version for w in workers for r in w.seen)
        assert versions == ["1", "1", "1", "2", "2", "2"]
        lines = (tmp_path / "shadow.jsonl").read_text().splitlines()
        assert len(lines) == 3 and '"shadow_version":2' in lines[0]


async def test_a_key_cannot_reach_or_probe_another_tenant(tmp_path: Path) -> None:
    from shoal.auth import Principal

    async with cluster(tmp_path, aliases={"stable": 1}) as (router, workers, _):
        own = Principal("acme", "k1")
        resp = pb.ModelInferResponse.FromString(await router.infer(_request(), 5.0, own))
        assert resp.model_version == "1"
        other = Principal("globex", "k2")
        with pytest.raises(RouteError) as foreign:
            await router.infer(_request("1"), 5.0, other)
        with pytest.raises(RouteError) as missing:
            router.route("globex/none", "1", other)
        assert foreign.value.code == missing.value.code == grpc.StatusCode.NOT_FOUND
        # Same words as for a model that does not exist: nothing about versions or existence.
        assert foreign.value.message == "unknown model acme/churn"
        assert missing.value.message == "unknown model globex/none"
        assert sum(len(w.seen) for w in workers) == 1
