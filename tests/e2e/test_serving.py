"""End to end through the router with tritonclient: native-equal predictions, version
policy (pins, aliases, a 90/10 split), shadow traffic and its records, a worker killed under
load, etcd down (the view marked stale)."""

from __future__ import annotations

import json
import math
import threading
import urllib.request
from pathlib import Path

import grpc
import lightgbm as lgb
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton
import xgboost as xgb
from prometheus_client.parser import text_string_to_metric_families

from shoal import modelgen
from shoal.cluster import LocalCluster
from shoal.oip import path
from shoal.pb import shoal_inference_pb2 as pb
from shoal.procs import wait_until
from tests.e2e.conftest import Control, router_url, shadow_log


class InferenceSyncStub:
    """ServerReady over a plain (sync) channel, to read trailing metadata."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.ServerReady = channel.unary_unary(
            path("ServerReady"),
            request_serializer=pb.ServerReadyRequest.SerializeToString,
            response_deserializer=pb.ServerReadyResponse.FromString,
        )


def _infer(
    client: triton.InferenceServerClient, model: str, x: np.ndarray, version: str = ""
) -> tuple[np.ndarray, str]:
    meta = client.get_model_metadata(model, version)
    spec = meta.inputs[0]
    inp = triton.InferInput(spec.name, list(x.shape), spec.datatype)
    inp.set_data_from_numpy(x.astype(np.float32))
    result = client.infer(model, [inp], model_version=version)
    resp = result.get_response()
    return result.as_numpy(resp.outputs[0].name), resp.model_version


def test_predictions_equal_native_for_each_framework(
    cluster: LocalCluster, control: Control, data30: tuple[np.ndarray, np.ndarray]
) -> None:
    x, y = data30
    xgb_bytes = modelgen.train_xgboost(x, y, n_trees=30)
    lgb_bytes = modelgen.train_lightgbm(x, y, n_trees=30)
    onnx_bytes = modelgen.train_onnx_mlp(x, y, epochs=80)
    control.register("native-x", "m", xgb_bytes, alias="stable")
    control.register("native-l", "m", lgb_bytes, alias="stable")
    control.register("native-o", "m", onnx_bytes, alias="stable")
    booster = xgb.Booster()
    booster.load_model(bytearray(xgb_bytes))
    lgbm = lgb.Booster(model_str=lgb_bytes.decode())
    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    rows = x[:256].astype(np.float32)
    expected = {
        "native-x/m": booster.inplace_predict(rows),
        "native-l/m": lgbm.predict(rows),
        "native-o/m": sess.run(None, {"input": rows})[0],
    }
    client = triton.InferenceServerClient(router_url(cluster))
    for model, want in expected.items():
        for batch in (rows[:1], rows):
            got, version = _infer(client, model, batch)
            assert version == "1"
            np.testing.assert_allclose(
                got.reshape(-1), np.asarray(want)[: len(batch)].reshape(-1), rtol=1e-6
            )


def test_split_pins_and_aliases(
    cluster: LocalCluster, control: Control, data30: tuple[np.ndarray, np.ndarray]
) -> None:
    x, y = data30
    v1 = control.register(
        "split", "m", modelgen.train_xgboost(x, y, n_trees=5, seed=1), alias="stable"
    )
    v2 = control.register(
        "split", "m", modelgen.train_xgboost(x, y, n_trees=6, seed=2), alias="canary"
    )
    control.traffic("split", "m", {v1: 90, v2: 10})
    client = triton.InferenceServerClient(router_url(cluster))
    row = x[:1]
    assert _infer(client, "split/m", row, str(v1))[1] == str(v1)
    assert _infer(client, "split/m", row, str(v2))[1] == str(v2)
    assert _infer(client, "split/m", row, "canary")[1] == str(v2)
    assert _infer(client, "split/m", row, "stable")[1] == str(v1)
    n = 2000
    inp = triton.InferInput("input__0", [1, 30], "FP32")
    inp.set_data_from_numpy(row.astype(np.float32))
    versions = [client.infer("split/m", [inp]).get_response().model_version for _ in range(n)]
    hits = versions.count(str(v2))
    assert versions.count(str(v1)) + hits == n
    half = 3.29 * math.sqrt(n * 0.1 * 0.9)  # two-sided 99.9 % binomial interval
    assert abs(hits - n * 0.1) <= half, hits
    with pytest.raises(triton.InferenceServerException, match="no version 99"):
        _infer(client, "split/m", row, "99")
    with pytest.raises(triton.InferenceServerException, match="unknown model"):
        client.infer("nobody/m", [inp])


def _shadow_lines(path: Path, model: str) -> list[dict[str, object]]:
    if not path.exists():
        return []
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["model"] == model]


def test_shadow_share_and_broken_shadow(
    cluster: LocalCluster, control: Control, data30: tuple[np.ndarray, np.ndarray]
) -> None:
    x, y = data30
    primary = modelgen.train_lightgbm(x, y, n_trees=8, seed=3)
    other = modelgen.train_lightgbm(x, y, n_trees=9, seed=4)
    v1 = control.register("shadowed", "m", primary, alias="stable")
    v2 = control.register("shadowed", "m", other)
    control.shadow("shadowed", "m", v2, 50.0)
    client = triton.InferenceServerClient(router_url(cluster))
    rows = x.astype(np.float32)
    want = lgb.Booster(model_str=primary.decode()).predict(rows)
    shadow_want = lgb.Booster(model_str=other.decode()).predict(rows)
    # Rows on which the two models clearly disagree: every comparison must say so.
    differ = np.flatnonzero(np.abs(want - shadow_want) > 1e-3)
    assert len(differ) >= 50
    n = 400
    answers: dict[str, tuple[np.ndarray, int]] = {}
    for i in range(n):
        row = int(differ[i % len(differ)])
        inp = triton.InferInput("input__0", [1, 30], "FP32")
        inp.set_data_from_numpy(rows[row : row + 1])
        result = client.infer("shadowed/m", [inp], request_id=f"req-{i}")
        resp = result.get_response()
        assert resp.model_version == str(v1)
        got = result.as_numpy(resp.outputs[0].name)
        np.testing.assert_allclose(got.reshape(-1), want[row : row + 1], rtol=1e-6)
        answers[f"req-{i}"] = (got, row)
    log = shadow_log(cluster)
    half = 3.29 * math.sqrt(n * 0.25)
    wait_until(
        lambda: len(_shadow_lines(log, "shadowed/m")) >= n * 0.5 - half, 30, what="shadow records"
    )
    records = _shadow_lines(log, "shadowed/m")
    assert abs(len(records) - n * 0.5) <= half
    for r in records:
        assert (r["primary_version"], r["shadow_version"]) == (v1, v2)
        # The primary in the record is the answer the client got, to the bit; the shadow
        # answered what the other model predicts, and the two are found to disagree.
        got, row = answers[str(r["id"])]
        assert r["primary"] == {"output__0": got.tolist()}, r
        shadow = r["shadow"]
        assert isinstance(shadow, dict) and list(shadow) == ["output__0"], r
        np.testing.assert_allclose(shadow["output__0"], shadow_want[row : row + 1], rtol=1e-5)
        assert r["agree"] is False, r

    # A shadow version whose artifact is corrupt in the store: primary answers stay right.
    broken = modelgen.train_lightgbm(x, y, n_trees=10, seed=5)
    v3 = control.register("shadowed", "m", broken)
    sha = control.model("shadowed", "m").versions[v3 - 1].sha256
    artifact = cluster.data_dir / "objects" / "artifacts" / "sha256" / sha[:2] / sha
    artifact.write_bytes(b"tree\ncorrupted")
    control.shadow("shadowed", "m", v3, 100.0)
    for _ in range(20):
        got, version = _infer(client, "shadowed/m", x[:1])
        assert version == str(v1)
        np.testing.assert_allclose(got.reshape(-1), want[:1], rtol=1e-6)
    wait_until(
        lambda: any(
            "error" in r for r in _shadow_lines(log, "shadowed/m") if r["shadow_version"] == v3
        ),
        30,
        what="a failed shadow record",
    )


def test_worker_killed_under_load_loses_no_request(
    cluster: LocalCluster, control: Control, data30: tuple[np.ndarray, np.ndarray]
) -> None:
    x, y = data30
    tenants = [f"steady-{i}" for i in range(6)]
    model = modelgen.train_xgboost(x, y, n_trees=5)
    for t in tenants:
        control.register(t, "m", model, alias="stable")
    client = triton.InferenceServerClient(router_url(cluster))
    inp = triton.InferInput("input__0", [1, 30], "FP32")
    inp.set_data_from_numpy(x[:1].astype(np.float32))
    for t in tenants:  # warm every shard member that will answer
        client.infer(f"{t}/m", [inp])
    errors: list[Exception] = []
    done = 0
    stop = threading.Event()

    def load() -> None:
        nonlocal done
        c = triton.InferenceServerClient(router_url(cluster))
        i = 0
        while not stop.is_set():
            try:
                c.infer(f"{tenants[i % len(tenants)]}/m", [inp])
                done += 1
            except Exception as exc:
                errors.append(exc)
            i += 1

    threads = [threading.Thread(target=load) for _ in range(3)]
    for th in threads:
        th.start()
    wait_until(lambda: done >= 200, 60, what="steady traffic")
    victim = cluster.workers[0]
    victim.proc.kill()
    survivors = {w.extra["worker_id"] for w in cluster.workers if w.proc.alive()}
    cluster.wait_snapshot(survivors, timeout=30)
    at_kill = done
    wait_until(lambda: done >= at_kill + 300, 60, what="traffic after the kill")
    stop.set()
    for th in threads:
        th.join()
    assert errors == []


def _view(cluster: LocalCluster) -> tuple[bool, str, float]:
    """(ServerReady's answer, its ``shoal-view`` trailing metadata, the router's
    ``shoal_router_view_stale`` gauge)."""
    assert cluster.router is not None
    with grpc.insecure_channel(router_url(cluster)) as channel:
        resp, call = InferenceSyncStub(channel).ServerReady.with_call(
            pb.ServerReadyRequest(), timeout=5
        )
    trailing = dict(call.trailing_metadata() or ())
    url = f"http://{cluster.router.extra['metrics']}/metrics"
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    (stale,) = [
        s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == "shoal_router_view_stale"
    ]
    return resp.ready, str(trailing.get("shoal-view")), stale


def test_the_view_is_marked_stale_while_etcd_is_down_and_known_models_answer(
    cluster: LocalCluster, control: Control, data30: tuple[np.ndarray, np.ndarray]
) -> None:
    """While etcd is down the router keeps serving its last view and says so: ServerReady
    stays true with ``shoal-view: stale`` in its trailing metadata, and the
    ``shoal_router_view_stale`` gauge is 1; both are back to current once etcd returns."""
    x, y = data30
    control.register("offline", "m", modelgen.train_xgboost(x, y, n_trees=5), alias="stable")
    client = triton.InferenceServerClient(router_url(cluster))
    inp = triton.InferInput("input__0", [1, 30], "FP32")
    inp.set_data_from_numpy(x[:1].astype(np.float32))
    wait_until(lambda: _answers(client, "offline/m", inp), 30, what="the model through the router")
    before = client.infer("offline/m", [inp]).as_numpy("output__0")
    assert _view(cluster) == (True, "current", 0.0)
    assert cluster.etcd is not None
    cluster.etcd.stop()
    try:
        wait_until(lambda: _view(cluster)[1] == "stale", 30, 0.1, "the router to see etcd gone")
        assert _view(cluster) == (True, "stale", 1.0)
        for _ in range(20):
            np.testing.assert_array_equal(
                client.infer("offline/m", [inp]).as_numpy("output__0"), before
            )
    finally:
        cluster.etcd.start()
    wait_until(lambda: _view(cluster)[1] == "current", 30, 0.1, "the view to be current again")
    assert _view(cluster) == (True, "current", 0.0)


def _answers(client: triton.InferenceServerClient, model: str, inp: triton.InferInput) -> bool:
    try:
        client.infer(model, [inp])
    except triton.InferenceServerException:
        return False
    return True
