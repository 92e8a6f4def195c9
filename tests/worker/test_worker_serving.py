"""One real worker process over gRPC: loading, hits, single flight, failures, validation,
native equality for every runtime, the admin service and tritonclient."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc
import lightgbm as lgb
import numpy as np
import onnxruntime as ort
import pytest
import xgboost as xgb
from worker_harness import Client, WorkerProc, infer_request, put_model

from shoal import modelgen
from shoal.objstore import ObjectStore, artifact_key
from shoal.pb import shoal_control_pb2 as cpb
from shoal.pb import shoal_control_pb2_grpc as cpb_grpc
from shoal.pb import shoal_inference_pb2 as pb


@pytest.fixture(scope="module")
def worker(worker_factory: Callable[..., WorkerProc]) -> WorkerProc:
    # A long backoff: repeated requests for a broken model must not reload it.
    return worker_factory({"SHOAL_LOAD_BACKOFF_S": "120", "SHOAL_BATCHING": "off"})


@pytest.fixture(scope="module")
def store_url(worker_factory: Any) -> str:
    return worker_factory.store_url


def native(fmt: str, data: bytes, x: np.ndarray) -> np.ndarray:
    """The library's own prediction, computed in this process."""
    if fmt.startswith("xgboost"):
        b = xgb.Booster(params={"nthread": 1})
        b.load_model(bytearray(data))
        return np.asarray(b.inplace_predict(x))
    if fmt == "lightgbm-text":
        return np.asarray(lgb.Booster(model_str=data.decode()).predict(x, num_threads=1))
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {sess.get_inputs()[0].name: x})[0])


async def test_miss_then_hit_seen_in_metrics(
    worker: WorkerProc, store_url: str, model_bytes: dict[str, Any]
) -> None:
    await put_model(worker.etcd, store_url, "serve", "hit", model_bytes["xgboost-json"])
    x = model_bytes["x"][:1]
    before = worker.scrape()
    async with Client(worker.address) as c:
        assert not await c.ready("serve/hit", "1")
        first = await c.infer("serve/hit", x, "1")
        mid = worker.scrape()
        second = await c.infer("serve/hit", x, "1")
        assert await c.ready("serve/hit", "1")
    after = worker.scrape()
    np.testing.assert_array_equal(first, second)

    def delta(m: Any, name: str, **labels: str) -> float:
        return float(m.get(name, **labels) - before.get(name, **labels))

    assert delta(mid, "shoal_worker_cache_misses_total", tier="memory") == 1
    assert delta(mid, "shoal_worker_loads_total", result="OK") == 1
    assert delta(mid, "shoal_worker_cache_hits_total", tier="host") == 0
    assert delta(after, "shoal_worker_cache_hits_total", tier="host") == 1
    assert delta(after, "shoal_worker_loads_total", result="OK") == 1
    assert after.get("shoal_worker_resident_bytes", tier="host") > 0
    assert after.get("shoal_worker_load_seconds_count") >= 1
    assert delta(after, "shoal_worker_requests_total", method="ModelInfer", code="OK") == 2


async def test_fifty_concurrent_first_requests_cause_one_load(
    worker: WorkerProc, store_url: str, model_bytes: dict[str, Any]
) -> None:
    await put_model(worker.etcd, store_url, "serve", "burst", model_bytes["lightgbm-text"])
    x = model_bytes["x"][:3]
    before = worker.scrape()
    async with Client(worker.address) as c:
        outs = await asyncio.gather(*(c.infer("serve/burst", x, "1") for _ in range(50)))
    after = worker.scrape()
    for o in outs:
        np.testing.assert_array_equal(o, outs[0])
    assert after.get("shoal_worker_loads_total") - before.get("shoal_worker_loads_total") == 1
    fetched = after.get("shoal_worker_cache_misses_total", tier="disk") - before.get(
        "shoal_worker_cache_misses_total", tier="disk"
    )
    assert fetched == 1


@pytest.mark.parametrize("fmt", ["xgboost-json", "xgboost-ubj", "lightgbm-text", "onnx"])
@pytest.mark.parametrize("rows", [1, 256])
async def test_predictions_equal_the_native_library(
    worker: WorkerProc, store_url: str, model_bytes: dict[str, Any], fmt: str, rows: int
) -> None:
    name = fmt.replace("-", "")
    data = model_bytes[fmt]
    await put_model(worker.etcd, store_url, "native", name, data)
    x = np.ascontiguousarray(model_bytes["x"][:rows])
    input_name = "input" if fmt == "onnx" else "input__0"
    async with Client(worker.address) as c:
        got = await c.infer(f"native/{name}", x, "1", name=input_name)
        typed = await c.infer(f"native/{name}", x, "1", name=input_name, typed=True)
    want = native(fmt, data, x)
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(typed, want, rtol=1e-6)


async def test_invalid_inputs_name_the_expected_shape(
    worker: WorkerProc, store_url: str, model_bytes: dict[str, Any]
) -> None:
    await put_model(worker.etcd, store_url, "serve", "strict", model_bytes["xgboost-ubj"])
    x = model_bytes["x"][:2]
    async with Client(worker.address) as c:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await c.infer("serve/strict", np.ascontiguousarray(x[:, :11]), "1")
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "expected FP32 [-1, 12]" in str(e.value.details())
        assert "received FP32 [2, 11]" in str(e.value.details())
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await c.infer("serve/strict", x.astype(np.float64), "1", datatype="FP64")
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "expected FP32 [-1, 12]" in str(e.value.details())
        assert "received FP64 [2, 12]" in str(e.value.details())
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await c.infer("serve/strict", np.ascontiguousarray(x[0]), "1")  # rank 1
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "[-1, 12]" in str(e.value.details())
        req = infer_request("serve/strict", x, "1")
        req.raw_input_contents[0] = req.raw_input_contents[0][:-4]  # a truncated tensor
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await c.stub.ModelInfer(req)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "needs 96" in str(e.value.details())
        # A malformed request never triggered a load.
        assert not await c.ready("serve/strict", "1")


async def test_unknown_model_and_version_are_not_found(
    worker: WorkerProc, store_url: str, model_bytes: dict[str, Any]
) -> None:
    await put_model(worker.etcd, store_url, "serve", "known", model_bytes["xgboost-json"])
    x = model_bytes["x"][:1]
    async with Client(worker.address) as c:
        for model, version, words in [
            ("serve/nosuch", "1", "serve/nosuch not found"),
            ("serve/known", "7", "version 7 of serve/known not found"),
            ("serve/known", "canary", "no alias 'canary'"),
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await c.infer(model, x, version)
            assert e.value.code() == grpc.StatusCode.NOT_FOUND, e.value.details()
            assert words in str(e.value.details())
        # A version registered after the worker cached the record is found (one re-read).
        await put_model(
            worker.etcd, store_url, "serve", "known", model_bytes["lightgbm-text"], version=2
        )
        resp = await c.stub.ModelInfer(infer_request("serve/known", x, "2"))
        assert resp.model_version == "2" and resp.model_name == "serve/known"
        # An empty version follows the stable alias (now 2); the watch delivered the move.
        resp = await c.stub.ModelInfer(infer_request("serve/known", x, ""))
        assert resp.model_version == "2"
        meta = await c.stub.ModelMetadata(pb.ModelMetadataRequest(name="serve/known", version="1"))
        assert list(meta.versions) == ["1", "2"] and meta.platform == "xgboost-json"
        assert meta.inputs[0].name == "input__0" and list(meta.inputs[0].shape) == [-1, 12]


async def test_broken_artifacts_fail_clearly_without_reload_storms(
    worker: WorkerProc, store_url: str, model_bytes: dict[str, Any]
) -> None:
    good = model_bytes["xgboost-json"]
    corrupt = b'{"learner": {"this is": "not a model"'
    await put_model(worker.etcd, store_url, "broken", "corrupt", corrupt, like=good)
    # Bytes no other test registered: the worker's disk tier must not already hold them.
    fresh = modelgen.train_xgboost(model_bytes["x"], model_bytes["y"], n_trees=4, seed=11)
    other = modelgen.train_xgboost(model_bytes["x"], model_bytes["y"], n_trees=3, seed=9)
    await put_model(worker.etcd, store_url, "broken", "mismatch", fresh, stored=other)
    mv = await put_model(worker.etcd, store_url, "broken", "missing", b"gone", like=good)
    await ObjectStore(store_url).delete(artifact_key(mv.sha256))
    await put_model(worker.etcd, store_url, "broken", "fine", model_bytes["lightgbm-text"])
    x = model_bytes["x"][:1]
    before = worker.scrape()
    expect = {
        "broken/corrupt": (grpc.StatusCode.FAILED_PRECONDITION, "corrupt artifact"),
        "broken/mismatch": (grpc.StatusCode.FAILED_PRECONDITION, "checksum mismatch"),
        "broken/missing": (grpc.StatusCode.NOT_FOUND, "not found in the object store"),
    }
    async with Client(worker.address) as c:
        for _ in range(10):
            for model, (code, words) in expect.items():
                with pytest.raises(grpc.aio.AioRpcError) as e:
                    await c.infer(model, x, "1")
                    pytest.fail(f"{model} answered")
                assert e.value.code() == code, e.value.details()
                assert words in str(e.value.details())
            assert (await c.infer("broken/fine", x, "1")).shape == (1,)
    after = worker.scrape()

    def loads(result: str) -> float:
        name = "shoal_worker_loads_total"
        return float(after.get(name, result=result) - before.get(name, result=result))

    assert loads("FAILED_PRECONDITION") == 2  # one attempt each, then the backoff answers
    assert loads("NOT_FOUND") == 1
    assert loads("OK") == 1


async def test_admin_load_and_stats(
    worker: WorkerProc, store_url: str, model_bytes: dict[str, Any]
) -> None:
    await put_model(worker.etcd, store_url, "admin", "warm", model_bytes["onnx"])
    async with grpc.aio.insecure_channel(worker.address) as ch:
        admin = cpb_grpc.WorkerAdminStub(ch)
        first = await admin.LoadModel(cpb.LoadModelRequest(tenant="admin", name="warm", version=1))
        assert first.loaded and not first.was_resident and first.tier == "host"
        again = await admin.LoadModel(cpb.LoadModelRequest(tenant="admin", name="warm"))
        assert again.loaded and again.was_resident
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await admin.LoadModel(cpb.LoadModelRequest(tenant="admin", name="cold", version=1))
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        st = await admin.Stats(cpb.WorkerStatsRequest())
    assert st.worker_id == worker.worker_id and st.address == worker.address
    assert st.ready and not st.draining and st.device == "cpu"
    assert st.host_budget == 256 << 20 and st.host_bytes > 0 and st.models_resident >= 1
    assert st.disk_bytes > 0 and st.metrics_address == worker.metrics
    info = worker.info()
    assert info is not None and info.ready and info.address == worker.address


def test_tritonclient_end_to_end(worker: WorkerProc, session_run: Any, model_bytes: Any) -> None:
    import tritonclient.grpc as tc

    data = model_bytes["xgboost-ubj"]
    session_run(put_model(worker.etcd, str(worker.store_url), "triton", "churn", data))
    x = np.ascontiguousarray(model_bytes["x"][:5])
    client = tc.InferenceServerClient(url=worker.address)
    try:
        assert client.is_server_live() and client.is_server_ready()
        inp = tc.InferInput("input__0", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        res = client.infer("triton/churn", [inp], model_version="1")
        np.testing.assert_allclose(res.as_numpy("output__0"), native("xgboost-ubj", data, x))
        assert res.get_response().model_version == "1"
        assert client.is_model_ready("triton/churn", "1")
        meta = client.get_model_metadata("triton/churn", "1")
        assert meta.inputs[0].datatype == "FP32"
    finally:
        client.close()
