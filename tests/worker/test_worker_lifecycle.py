"""A worker's key in etcd through its life: SIGKILL (lease expiry), SIGTERM (drain), and the
S3 object store. The GPU tests skip only where no CUDA device exists; where one does, they
require the CUDA execution provider (ONNX) and device=cuda (XGBoost) to be in use."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from worker_harness import Client, WorkerProc, put_model

from shoal.cluster import etcd_get
from shoal.device import cuda_devices
from shoal.devservers import LocalEtcd
from shoal.etcd import EtcdStore
from shoal.frameworks import gpu_capable
from shoal.procs import wait_until
from shoal.settings import CommonSettings


def slow_identity_onnx(features: int = 1024, layers: int = 64) -> bytes:
    """An ONNX graph that returns its input after ``layers`` identity MatMuls (slow on CPU)."""
    from onnx import TensorProto, helper, numpy_helper

    eye = numpy_helper.from_array(np.eye(features, dtype=np.float32), "eye")
    nodes = []
    prev = "input"
    for i in range(layers):
        out = "output" if i == layers - 1 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [prev, "eye"], [out]))
        prev = out
    graph = helper.make_graph(
        nodes,
        "slow_identity",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", features])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", features])],
        [eye],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def start_worker(etcd: str, tmp: Path, env: dict[str, str], store: str = "") -> WorkerProc:
    return WorkerProc(etcd, store or (tmp / "objects").as_uri(), tmp / "w", env).start()


def test_sigkill_key_disappears_within_lease_ttl(etcd_url: str, tmp_path: Path) -> None:
    w = start_worker(etcd_url, tmp_path, {"SHOAL_LEASE_TTL": "2"})
    try:
        assert w.info() is not None
        assert w.proc is not None
        w.proc.kill()
        # etcd expires a lease at most TTL after its last renewal (plus its own tick).
        wait_until(lambda: etcd_get(etcd_url, w.key) is None, 2 + 1.5, 0.05, "the key to expire")
    finally:
        w.stop()


async def test_sigterm_removes_key_at_once_and_drains(
    etcd_url: str, tmp_path: Path, session_run: Any
) -> None:
    env = {"SHOAL_DRAIN_GRACE_S": "60", "SHOAL_LEASE_TTL": "30"}
    # Both slow predictions run at once (the per-model bound would queue the second), and
    # neither is taken for a hang on a busy machine.
    env.update(SHOAL_MODEL_MAX_CONCURRENCY="2", SHOAL_PREDICT_TIMEOUT_S="300")
    w = start_worker(etcd_url, tmp_path, env)
    try:
        await put_model(etcd_url, w.store_url, "drain", "slow", slow_identity_onnx())
        x = np.random.default_rng(0).normal(size=(256, 1024)).astype(np.float32)
        async with Client(w.address) as c:
            await c.infer("drain/slow", x[:1], "1", name="input")  # loaded: only predicts remain
            pending = [asyncio.ensure_future(c.infer("drain/slow", x, "1", name="input"))]
            pending += [asyncio.ensure_future(c.infer("drain/slow", x, "1", name="input"))]

            def in_flight() -> bool:
                return w.scrape().get("shoal_worker_requests_in_flight") >= 2

            await asyncio.to_thread(wait_until, in_flight, 30, 0.01, "2 requests in flight")
            assert w.proc is not None
            w.proc.signal(signal.SIGTERM)
            # The key goes at once (the lease is revoked), not after the 30 s TTL.
            await asyncio.to_thread(
                wait_until, lambda: etcd_get(etcd_url, w.key) is None, 10, 0.02, "key removal"
            )
            outs = await asyncio.wait_for(asyncio.gather(*pending), 60)
        for out in outs:
            np.testing.assert_allclose(out, x, rtol=1e-5)
        assert w.proc.proc is not None
        assert await asyncio.to_thread(w.proc.proc.wait, 30) == 0
        assert "draining" in w.log_tail()
    finally:
        w.stop()


async def test_loads_from_the_s3_object_store(
    etcd_url: str, tmp_path: Path, s3_settings: CommonSettings, model_bytes: dict[str, Any]
) -> None:
    store = "s3://shoal-test/worker-test"
    w = start_worker(
        etcd_url, tmp_path, {"SHOAL_S3_ENDPOINT": s3_settings.s3_endpoint}, store=store
    )
    try:
        data = model_bytes["lightgbm-text"]
        await put_model(etcd_url, store, "s3", "lgb", data, settings=s3_settings)
        x = model_bytes["x"][:4]
        async with Client(w.address) as c:
            got = await c.infer("s3/lgb", x, "1")
        import lightgbm as lgb

        want = lgb.Booster(model_str=data.decode()).predict(x, num_threads=1)
        np.testing.assert_allclose(got, want, rtol=1e-6)
        assert w.scrape().get("shoal_worker_cache_misses_total", tier="disk") == 1
    finally:
        w.stop()


def _require_cuda() -> None:
    """Skip only where libcuda reports no device. Where one exists, the GPU path must work:
    a runtime that cannot use it fails the test instead of skipping it."""
    if cuda_devices().count == 0:
        pytest.skip("no CUDA device on this machine (libcuda reports none)")
    import onnxruntime as ort

    assert gpu_capable("onnx"), (
        "a CUDA device is present but ONNX models cannot use it (no CUDAExecutionProvider?); "
        f"onnxruntime's providers: {ort.get_available_providers()}"
    )


@pytest.mark.gpu
async def test_onnx_runs_on_cuda_and_demotes_to_host(
    etcd_url: str, tmp_path: Path, model_bytes: dict[str, Any]
) -> None:
    _require_cuda()
    from shoal.frameworks import estimate_bytes
    from shoal.frameworks import onnx as onnx_fw

    data = model_bytes["onnx"]
    # The loader the worker uses puts the session on the CUDA provider, not silently on CPU.
    assert onnx_fw.load(data, "cuda").get_providers()[0] == "CUDAExecutionProvider"
    gpu_budget = estimate_bytes("onnx", len(data)) + 1  # room for exactly one model
    w = start_worker(
        etcd_url, tmp_path, {"SHOAL_DEVICE": "cuda", "SHOAL_GPU_BUDGET": str(gpu_budget)}
    )
    try:
        await put_model(etcd_url, w.store_url, "gpu", "a", data)
        other = data + b""  # same graph, distinct registration
        await put_model(etcd_url, w.store_url, "gpu", "b", other, version=1)
        x = np.ascontiguousarray(model_bytes["x"][:8])
        async with Client(w.address) as c:
            a = await c.infer("gpu/a", x, "1", name="input")
            m = w.scrape()
            # Resident on the GPU tier: only a session whose providers include CUDA gets there
            # (a session that fell back to the CPU is placed in host memory).
            assert m.get("shoal_worker_models_resident", tier="gpu") == 1
            assert m.get("shoal_worker_models_resident", tier="host") == 0
            b = await c.infer("gpu/b", x, "1", name="input")
            m = w.scrape()
            assert m.get("shoal_worker_cache_demotions_total", tier="gpu", to="host") == 1
            assert m.get("shoal_worker_models_resident", tier="host") == 1
            again = await c.infer("gpu/a", x, "1", name="input")  # answered from host memory
        import onnxruntime as ort

        sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        want = sess.run(None, {"input": x})[0]
        for got in (a, b, again):
            np.testing.assert_allclose(got, want, rtol=1e-4)
    finally:
        w.stop()


@pytest.mark.gpu
async def test_xgboost_runs_with_device_cuda(
    etcd_url: str, tmp_path: Path, model_bytes: dict[str, Any]
) -> None:
    _require_cuda()
    import json

    import xgboost as xgb

    from shoal.frameworks import xgboost as xgb_fw

    assert xgb.build_info().get("USE_CUDA") is True, "this XGBoost is built without CUDA"
    data = model_bytes["xgboost-json"]
    x = np.ascontiguousarray(model_bytes["x"][:8], dtype=np.float32)
    cpu = xgb_fw.load(data, "cpu").inplace_predict(x)
    # The loader the worker uses configures the booster for the GPU, and it predicts there.
    booster = xgb_fw.load(data, "cuda")
    np.testing.assert_allclose(booster.inplace_predict(x), cpu, rtol=1e-5)
    config = json.loads(booster.save_config())
    assert config["learner"]["generic_param"]["device"].startswith("cuda"), config
    w = start_worker(etcd_url, tmp_path, {"SHOAL_DEVICE": "cuda"})
    try:
        await put_model(etcd_url, w.store_url, "gpu", "x", data)
        async with Client(w.address) as c:
            got = await c.infer("gpu/x", x, "1")
        m = w.scrape()
        assert m.get("shoal_worker_models_resident", tier="gpu") == 1
        assert m.get("shoal_worker_models_resident", tier="host") == 0
        np.testing.assert_allclose(got, cpu, rtol=1e-5)
    finally:
        w.stop()


async def test_keeps_serving_through_an_etcd_outage_and_registers_again(
    tmp_path: Path, model_bytes: dict[str, Any]
) -> None:
    # A private etcd (the session one must stay up), restarted on the same ports and data.
    etcd = LocalEtcd(tmp_path / "etcd").start()
    w: WorkerProc | None = None
    try:
        w = start_worker(etcd.url, tmp_path, {"SHOAL_LEASE_TTL": "2"})
        await put_model(etcd.url, w.store_url, "outage", "m", model_bytes["xgboost-json"])
        x = model_bytes["x"][:3]
        async with EtcdStore(etcd.url) as s:
            first = await s.get(w.key)
        assert first is not None and first.lease
        async with Client(w.address) as c:
            before = await c.infer("outage/m", x, "1")
            etcd.kill()
            # Cached record and resident model: predictions go on without etcd.
            np.testing.assert_array_equal(await c.infer("outage/m", x, "1"), before)
        # Down for longer than the TTL: the lease is gone; once etcd is back the worker
        # registers again under a new lease.
        restarted = LocalEtcd(tmp_path / "etcd", etcd.client_port, etcd.peer_port)
        wait_until(lambda: "registering again" in w.log_tail(), 30, 0.05, "the lease to be lost")
        etcd = restarted.start()

        async def registered_again() -> bool:
            # etcd restores the old lease on restart (it then expires): wait for a new one.
            async with EtcdStore(etcd.url) as s:
                kv = await s.get(w.key)
            return kv is not None and kv.lease != first.lease

        for _ in range(600):
            if await registered_again():
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail(f"the worker did not register again:\n{w.log_tail()}")
        async with Client(w.address) as c:
            np.testing.assert_array_equal(await c.infer("outage/m", x, "1"), before)
    finally:
        if w is not None:
            w.stop()
        etcd.stop()


def test_the_advertised_address_is_what_etcd_publishes(etcd_url: str, tmp_path: Path) -> None:
    """Bound to one address, published under another (a pod IP, say): routers dial the latter."""
    w = start_worker(etcd_url, tmp_path, {"SHOAL_ADVERTISE_ADDRESS": "10.20.30.40:8001"})
    try:
        info = w.info()
        assert info is not None
        assert info.address == "10.20.30.40:8001"
        assert "worker: 10.20.30.40:8001" in w.log_tail()  # what it says it serves at
    finally:
        w.stop()
