"""The router over real gRPC: the native gateway (in this process, its table fed from an
in-memory state store) in front of small in-process gRPC workers that echo what they
received. Version pinning by appended field, retries, no-retry codes, busy refusals, shadow
copies, keys. End-to-end tests with real worker processes live in tests/e2e."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import numpy as np
import pytest

from router.app import RouterApp
from router.settings import RouterSettings
from shoal.artifacts import Signature, TensorSpec
from shoal.auth import new_key
from shoal.oip import RETRY_ELSEWHERE, InferenceStub, generic_handler
from shoal.pb import shoal_inference_pb2 as pb
from shoal.records import (
    CLUSTER,
    ClusterConfig,
    Member,
    ModelRecord,
    ModelVersion,
    PoolSnapshot,
    ShadowConfig,
    TenantConfig,
    WorkerInfo,
    model_key,
    placement_key,
    tenant_key,
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
        self.delay = 0.0  # seconds before answering
        self.seen: list[pb.ModelInferRequest] = []
        self.seen_raw: list[bytes] = []  # the request bytes as received
        self.server: grpc.aio.Server | None = None
        self.address = ""

    async def infer(self, raw: bytes, ctx: grpc.aio.ServicerContext) -> bytes:
        req = pb.ModelInferRequest.FromString(raw)
        self.seen_raw.append(raw)
        self.seen.append(req)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.busy:
            await ctx.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED, f"{self.worker_id} is busy", RETRY_ELSEWHERE
            )
        if self.fail_with is not None:
            await ctx.abort(self.fail_with, f"{self.worker_id} says no")
        resp = pb.ModelInferResponse(model_name=req.model_name, model_version=req.model_version)
        resp.outputs.add(name="output__0", datatype="FP32", shape=[1])
        resp.raw_output_contents.append(np.float32([int(self.worker_id[1:])]).tobytes())
        return resp.SerializeToString()

    async def start(self) -> None:
        self.server = grpc.aio.server()
        handler = generic_handler({"ModelInfer": self.infer}, raw=frozenset({"ModelInfer"}))
        self.server.add_generic_rpc_handlers((handler,))
        port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        self.address = f"127.0.0.1:{port}"

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(0)


def _version(v: int) -> ModelVersion:
    return ModelVersion(v, f"artifacts/{v}", "xgboost", "xgboost-json", "cpu", "0" * 64, 10, SIG)


class Routed:
    """The router under test, its echo workers and its store; ``infer`` sends raw requests."""

    def __init__(self, app: RouterApp, workers: list[EchoWorker], store: MemoryStore) -> None:
        self.app = app
        self.workers = workers
        self.store = store
        self.channel = grpc.aio.insecure_channel(app.address)
        self.stub = InferenceStub(self.channel)

    async def infer(self, raw: bytes, key: str = "") -> pb.ModelInferResponse:
        md = (("authorization", f"Bearer {key}"),) if key else None
        resp = await self.stub.ModelInferRaw(raw, timeout=5.0, metadata=md)
        return pb.ModelInferResponse.FromString(resp)

    def sample(self, name: str, labels: dict[str, str] | None = None) -> float:
        return self.app.metrics.registry.get_sample_value(name, labels) or 0.0


@asynccontextmanager
async def cluster(
    tmp_path: Path, n: int = 3, shard_size: int = 2, auth: bool = False, **record_kw: object
) -> AsyncIterator[Routed]:
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
    settings = RouterSettings(
        port=0,
        rest_port=0,
        metrics_port=-1,
        retries=2,
        eject_s=30.0,
        data_dir=tmp_path,
        auth=auth,
    )
    app = RouterApp(settings, store=store)
    await app.start()
    routed = Routed(app, workers, store)
    try:
        yield routed
    finally:
        await routed.channel.close()
        await app.stop(0.0)
        for w in workers:
            await w.stop()


async def _until(check: Callable[[], bool | Awaitable[bool]], timeout: float = 10.0) -> None:
    """Wait for ``check`` to hold (the router's table follows the store asynchronously)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        ok = check()
        if not isinstance(ok, bool):
            ok = await ok
        if ok:
            return
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def _request(version: str = "", model: str = "acme/churn") -> bytes:
    req = pb.ModelInferRequest(model_name=model, model_version=version, id="r1")
    req.inputs.add(name="input__0", datatype="FP32", shape=[1, 2])
    req.raw_input_contents.append(np.float32([[1, 2]]).tobytes())
    return req.SerializeToString()


async def test_version_is_pinned_without_reencoding_tensors(tmp_path: Path) -> None:
    async with cluster(tmp_path, aliases={"stable": 1, "canary": 2}) as c:
        raw = _request()
        assert (await c.infer(raw)).model_version == "1"  # stable
        assert (await c.infer(_request("canary"))).model_version == "2"
        seen = [r for w in c.workers for r in w.seen_raw]
        # The worker got the client's bytes untouched, plus the version field appended.
        assert seen[0] == raw + pb.InferRoutingHeader(model_version="1").SerializeToString()
        parsed = pb.ModelInferRequest.FromString(seen[0])
        assert parsed.raw_input_contents[0] == np.float32([[1, 2]]).tobytes()
        assert parsed.id == "r1" and parsed.model_version == "1"


async def test_same_model_goes_to_one_primary(tmp_path: Path) -> None:
    async with cluster(tmp_path, n=5, aliases={"stable": 1}) as c:
        for _ in range(20):
            await c.infer(_request())
        assert sorted(len(w.seen) for w in c.workers) == [0, 0, 0, 0, 20]


async def test_unavailable_member_is_retried_and_ejected(tmp_path: Path) -> None:
    async with cluster(tmp_path, n=3, aliases={"stable": 1}) as c:
        await c.infer(_request())
        (primary,) = [w for w in c.workers if w.seen]
        await primary.stop()  # connection refused from now on
        for _ in range(5):
            assert (await c.infer(_request())).model_version == "1"
        # Ejected after the first failure: later requests go straight to a live member.
        assert c.sample("shoal_router_retries_total") == 1


async def test_invalid_argument_and_not_found_are_not_retried(tmp_path: Path) -> None:
    async with cluster(tmp_path, n=3, aliases={"stable": 1}) as c:
        for w in c.workers:
            w.fail_with = grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await c.infer(_request())
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details() == "w" + str(_answered(c)) + " says no"
        assert sum(len(w.seen) for w in c.workers) == 1
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await c.infer(_request("7"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert err.value.details() == "model acme/churn has no version 7"
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await c.infer(_request(model="nobody/none"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert err.value.details() == "unknown model nobody/none"
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await c.stub.ModelInferRaw(b"\xff\xff\xff", timeout=5.0)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details() == "malformed ModelInferRequest"
        assert sum(len(w.seen) for w in c.workers) == 1


def _answered(c: Routed) -> int:
    (w,) = [w for w in c.workers if w.seen]
    return int(w.worker_id[1:])


async def test_a_busy_member_is_passed_over_but_not_ejected(tmp_path: Path) -> None:
    async with cluster(tmp_path, n=3, aliases={"stable": 1}) as c:
        await c.infer(_request())
        (primary,) = [w for w in c.workers if w.seen]
        primary.busy = True
        resp = await c.infer(_request())
        assert resp.raw_output_contents[0] != np.float32([int(primary.worker_id[1:])]).tobytes()
        assert len(primary.seen) == 2  # tried first, refused, and the next member answered
        primary.busy = False
        await c.infer(_request())
        assert len(primary.seen) == 3  # still the primary: a busy answer does not eject
        for w in c.workers:
            w.busy = True
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await c.infer(_request())
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "busy" in (err.value.details() or "")
        for w in c.workers:  # a refusal without the trailer (a size limit, say) is final
            w.busy, w.fail_with = False, grpc.StatusCode.RESOURCE_EXHAUSTED
        before = sum(len(w.seen) for w in c.workers)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await c.infer(_request())
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert sum(len(w.seen) for w in c.workers) == before + 1


async def test_all_unavailable_gives_unavailable_within_budget(tmp_path: Path) -> None:
    async with cluster(tmp_path, n=4, aliases={"stable": 1}) as c:
        for w in c.workers:
            w.fail_with = grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await c.infer(_request())
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert (err.value.details() or "").startswith("no worker answered after 3 attempt(s): ")
        assert sum(len(w.seen) for w in c.workers) == 3  # 1 + retries


async def test_shadow_copies_are_sent_and_logged(tmp_path: Path) -> None:
    async with cluster(tmp_path, aliases={"stable": 1}, shadow=ShadowConfig(2, 100.0)) as c:
        for _ in range(3):
            assert (await c.infer(_request())).model_version == "1"
        await _until(lambda: c.app.shadow.recorded == 3)
        compared = c.sample("shoal_router_shadow_compared_total", {"model": "acme/churn"})
        assert compared == 3 and c.sample("shoal_router_shadow_sent_total") == 3
        versions = sorted(r.model_version for w in c.workers for r in w.seen)
        assert versions == ["1", "1", "1", "2", "2", "2"]
        lines = (tmp_path / "shadow" / "shadow.jsonl").read_text().splitlines()
        assert len(lines) == 3 and '"shadow_version":2' in lines[0]


async def test_a_key_cannot_reach_or_probe_another_tenant(tmp_path: Path) -> None:
    async with cluster(tmp_path, aliases={"stable": 1}, auth=True) as c:
        acme_key, acme_entry = new_key("acme")
        globex_key, globex_entry = new_key("globex")
        await c.store.put(
            tenant_key("acme"), TenantConfig("acme", key_hashes=(acme_entry,)).encode()
        )
        await c.store.put(
            tenant_key("globex"), TenantConfig("globex", key_hashes=(globex_entry,)).encode()
        )

        async def own_key_works() -> bool:
            try:
                return (await c.infer(_request(), acme_key)).model_version == "1"
            except grpc.aio.AioRpcError:
                return False

        await _until(own_key_works)
        with pytest.raises(grpc.aio.AioRpcError) as foreign:
            await c.infer(_request("1"), globex_key)
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await c.infer(_request("1", model="globex/none"), globex_key)
        assert foreign.value.code() == missing.value.code() == grpc.StatusCode.NOT_FOUND
        # Same words as for a model that does not exist: nothing about versions or existence.
        assert foreign.value.details() == "unknown model acme/churn"
        assert missing.value.details() == "unknown model globex/none"
        assert sum(len(w.seen) for w in c.workers) == 1
