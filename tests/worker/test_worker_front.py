"""The native worker front (native/src/worker, worker/front.py) against a real worker process.

What is asserted is what a client sees and what the worker's metrics say: a resident tree or
ONNX model is answered by the front without Python (``shoal_worker_native_requests_total``), with
the library's numbers and the Python worker's messages; concurrent misses make one call into
Python; aliases and the empty version follow the record as it moves.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import grpc
import numpy as np
import pytest
from conftest import WorkerFactory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from worker_harness import Client, WorkerProc, infer_request, output_array, put_model

NATIVE = "shoal_worker_native_requests_total"


@pytest.fixture(scope="module")
def front_worker(worker_factory: WorkerFactory) -> WorkerProc:
    return worker_factory({"SHOAL_BATCHING": "off", "SHOAL_MAX_REQUEST_ROWS": "8"})


async def _code(call: Any) -> tuple[grpc.StatusCode, str]:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


@pytest.mark.parametrize("fmt", ["xgboost-json", "lightgbm-text", "onnx"])
async def test_a_resident_model_is_answered_without_python(
    front_worker: WorkerProc, model_bytes: dict[str, Any], fmt: str
) -> None:
    import lightgbm as lgb
    import onnxruntime as ort
    import xgboost as xgb

    w = front_worker
    name = f"front/{fmt.split('-')[0]}"
    await put_model(w.etcd, w.store_url, *name.split("/"), model_bytes[fmt])
    x = np.ascontiguousarray(model_bytes["x"][:5])
    if fmt == "xgboost-json":
        booster = xgb.Booster()
        booster.load_model(bytearray(model_bytes[fmt]))
        expected = booster.inplace_predict(x)
    elif fmt == "onnx":
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        session = ort.InferenceSession(model_bytes[fmt], opts, ["CPUExecutionProvider"])
        expected = session.run(None, {"input": x})[0]
    else:
        expected = lgb.Booster(model_str=model_bytes[fmt].decode()).predict(x, num_threads=1)
    input_name = "input" if fmt == "onnx" else "input__0"
    async with Client(w.address) as c:
        await c.infer(name, x, "1", name=input_name)  # the miss: Python loads it
        before = w.scrape().get(NATIVE)
        for version in ("1", "", "stable"):
            req = infer_request(name, x, version, name=input_name)
            req.id = f"req-{version or 'empty'}"
            resp = await c.stub.ModelInfer(req, timeout=30)
            assert (resp.model_name, resp.model_version, resp.id) == (name, "1", req.id)
            got = output_array(resp)
            assert got.dtype == expected.dtype and got.shape == expected.shape
            assert got.tobytes() == np.ascontiguousarray(expected).tobytes()
    assert w.scrape().get(NATIVE) - before == 3


async def test_concurrent_misses_make_one_call_into_python(
    front_worker: WorkerProc, model_bytes: dict[str, Any]
) -> None:
    w = front_worker
    await put_model(w.etcd, w.store_url, "front", "burst", model_bytes["lightgbm-text"])
    x = np.ascontiguousarray(model_bytes["x"][:1])
    before = w.scrape()
    async with Client(w.address) as c:
        outs = await asyncio.gather(*(c.infer("front/burst", x, "1") for _ in range(16)))
    after = w.scrape()
    assert all(np.array_equal(o, outs[0]) for o in outs)
    # One request loaded the model through Python; the 15 that arrived meanwhile waited in
    # the front and were answered there.
    assert after.get(NATIVE) - before.get(NATIVE) == 15
    assert (
        after.get("shoal_worker_loads_total", result="OK")
        - before.get("shoal_worker_loads_total", result="OK")
        == 1
    )


async def test_bad_requests_get_the_python_workers_messages(
    front_worker: WorkerProc, model_bytes: dict[str, Any]
) -> None:
    w = front_worker
    await put_model(w.etcd, w.store_url, "front", "strict", model_bytes["xgboost-json"])
    x = np.ascontiguousarray(model_bytes["x"][:2])
    bad = {
        "shape": infer_request("front/strict", x[:, :5], "1"),
        "dtype": infer_request("front/strict", x.astype(np.float64), "1", datatype="FP64"),
        "rows": infer_request("front/strict", np.repeat(x, 5, axis=0), "1"),
        "output": infer_request("front/strict", x, "1"),
    }
    bad["output"].outputs.add(name="nope")
    async with Client(w.address) as c:
        # Before the model is resident, Python answers (and a malformed request loads nothing).
        first = {k: await _code(c.stub.ModelInfer(r, timeout=30)) for k, r in bad.items()}
        await c.infer("front/strict", x, "1")
        before = w.scrape().get(NATIVE)
        then = {k: await _code(c.stub.ModelInfer(r, timeout=30)) for k, r in bad.items()}
    assert w.scrape().get(NATIVE) - before == len(bad)  # all answered by the front
    assert then == first
    assert first["shape"][0] == grpc.StatusCode.INVALID_ARGUMENT
    assert "expected FP32 [-1, 12], received FP32 [2, 5]" in first["shape"][1]
    assert first["dtype"][0] == grpc.StatusCode.INVALID_ARGUMENT
    assert first["rows"] == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "input 'input__0' has 10 rows; this worker accepts at most 8 rows per request "
        "(SHOAL_MAX_REQUEST_ROWS): split the batch",
    )
    assert first["output"][0] == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown output 'nope'" in first["output"][1]


async def test_the_empty_version_follows_the_record_as_it_moves(
    front_worker: WorkerProc, model_bytes: dict[str, Any]
) -> None:
    w = front_worker
    x = np.ascontiguousarray(model_bytes["x"][:1])
    await put_model(w.etcd, w.store_url, "front", "moving", model_bytes["xgboost-json"])
    async with Client(w.address) as c:
        resp = await c.stub.ModelInfer(infer_request("front/moving", x, ""), timeout=30)
        assert resp.model_version == "1"
        await put_model(
            w.etcd, w.store_url, "front", "moving", model_bytes["lightgbm-text"], version=2
        )
        for _ in range(200):  # the watch brings the new record to the front
            resp = await c.stub.ModelInfer(infer_request("front/moving", x, ""), timeout=30)
            if resp.model_version == "2":
                break
            await asyncio.sleep(0.05)
        assert resp.model_version == "2"
        assert resp.outputs[0].datatype == "FP64"  # LightGBM's answer, not XGBoost's
        # A pinned version still answers from its own model.
        resp = await c.stub.ModelInfer(infer_request("front/moving", x, "1"), timeout=30)
        assert (resp.model_version, resp.outputs[0].datatype) == ("1", "FP32")


async def test_health_and_readiness_are_served_by_the_front(front_worker: WorkerProc) -> None:
    async with grpc.aio.insecure_channel(front_worker.address) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        resp = await health.Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await health.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    async with Client(front_worker.address) as c:
        from shoal.pb import shoal_inference_pb2 as pb

        ready = await c.stub.ServerReady(pb.ServerReadyRequest(), timeout=10)
        assert ready.ready


async def test_health_watch_follows_a_drain_to_not_serving_and_ends(
    worker_factory: WorkerFactory,
) -> None:
    w = worker_factory({"SHOAL_DRAIN_GRACE_S": "20"})
    assert w.proc is not None
    async with grpc.aio.insecure_channel(w.address) as ch:
        stream = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(service=""))
        first = await asyncio.wait_for(stream.read(), 10)
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        unknown = health_pb2_grpc.HealthStub(ch).Watch(
            health_pb2.HealthCheckRequest(service="nope")
        )
        assert (await asyncio.wait_for(unknown.read(), 10)).status == (
            health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
        )
        unknown.cancel()
        w.proc.signal(signal.SIGTERM)
        second = await asyncio.wait_for(stream.read(), 10)
        assert second.status == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await asyncio.wait_for(stream.read(), 10)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert err.value.details() == "this worker is shutting down"
    # An open watch does not hold the drain for its grace period.
    assert w.proc.proc is not None
    assert await asyncio.to_thread(w.proc.proc.wait, 15) == 0


async def test_an_input_under_another_name_is_refused_naming_the_expected_one(
    worker_factory: WorkerFactory, model_bytes: dict[str, Any]
) -> None:
    """Strict input names, a single input's too (as Triton checks them): the same refusal
    from Python (the version not resident yet) and from the front (resident). A worker of
    its own: its native count is this test's alone."""
    w = worker_factory({"SHOAL_BATCHING": "off"})
    await put_model(w.etcd, w.store_url, "front", "strict", model_bytes["lightgbm-text"])
    x = np.ascontiguousarray(model_bytes["x"][:2])
    want = (
        grpc.StatusCode.INVALID_ARGUMENT,
        "front/strict:1: missing input 'input__0' FP32 [-1, 12]; received ['features']",
    )
    async with Client(w.address) as c:
        before = w.scrape().get(NATIVE)
        # Python refuses it from the record's signature, before any load.
        assert await _code(c.infer("front/strict", x, "1", name="features")) == want
        await c.infer("front/strict", x, "1")  # the miss: loaded and handed to the front
        assert w.scrape().get(NATIVE) == before
        assert await _code(c.infer("front/strict", x, "1", name="features")) == want
        assert w.scrape().get(NATIVE) - before == 1  # that refusal was the front's
