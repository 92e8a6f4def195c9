"""Cold start (issue 8, item 3): time to the first prediction of a model that is not resident.

What is measured, per framework (XGBoost 100 trees, LightGBM 100 trees, ONNX MLP; see
``bench.models``), ``BENCH_COLD_REPEATS`` times with distinct artifacts (distinct sha256, so
nothing is shared through the content-addressed store or the disk cache):

* **store, file://**: a one-worker ``LocalCluster`` whose object store is a local folder;
  the wall time of the first ModelInfer (1 row) sent straight to the worker for a model
  registered but never loaded: fetch from the store, sha256 check, write to the disk tier,
  deserialize, admit to the cache, predict, answer;
* **disk tier**: the same artifact registered under a second name ("twin") after the first
  was loaded: its bytes are in the worker's disk tier but the twin is not in memory;
* **store, S3**: the same as the first, in a second cluster whose store is SeaweedFS's S3
  gateway on loopback (``shoal.devservers.LocalSeaweedS3``).

Before each timed call the model's record is fetched with ModelMetadata (the worker caches
records separately from models), so the figure is the model load plus one prediction, not an
etcd lookup. Each framework is loaded once, untimed, before the repeats: the first load of a
framework in a process pays the runtime's one-time initialisation. The runtime of the
prediction itself is shown by the *warm* call made right after each cold one.

The **floor** is done in this process with the bare libraries (one thread, as the worker):
fetch the artifact from the same store (``shoal.objstore``, i.e. obstore) and deserialize it;
"floor + predict" adds the first 1-row prediction. Target (issue): cold first prediction
from the local store <= 3x the floor, for each framework (medians). Written with
``bench.common.write_results("cold", ...)``. Run alone: ``.venv/bin/python -m bench.bench_cold``.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: python bench/bench_cold.py
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import grpc
import numpy as np

from bench.common import figure, write_results
from bench.config import BenchConfig, scratch, wait_for
from bench.models import BenchModel, bench_models, variants
from bench.shoal_harness import ShoalBench
from bench.wire import INFER_PATH, infer_request
from shoal.artifacts import sha256_hex
from shoal.objstore import ObjectStore, artifact_key
from shoal.pb import shoal_inference_pb2 as pb
from shoal.settings import CommonSettings

TENANT = "cold"
WORKER_ENV = {"SHOAL_DEVICE": "cpu", "SHOAL_HOST_BUDGET": "2GiB", "SHOAL_DISK_BUDGET": "2GiB"}
BUCKET = "shoal-bench"
META_PATH = "/inference.GRPCInferenceService/ModelMetadata"


# --- the in-process floor -------------------------------------------------------------------


def _deserialize(framework: str, data: bytes) -> Callable[[np.ndarray], Any]:
    """Load with the bare library (one thread); return a 1-row predict function."""
    if framework == "xgboost":
        import xgboost as xgb

        booster = xgb.Booster(params={"nthread": 1})
        booster.load_model(bytearray(data))
        return lambda row: booster.inplace_predict(row, validate_features=False)
    if framework == "lightgbm":
        import lightgbm as lgb

        lboost = lgb.Booster(model_str=data.decode())
        return lambda row: lboost.predict(row, num_threads=1)
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda row: sess.run(None, {name: row})


def floor_times(
    store: ObjectStore, framework: str, artifacts: list[bytes], row: np.ndarray
) -> dict[str, list[float]]:
    """Per artifact: seconds to fetch + deserialize, and to fetch + deserialize + predict."""
    loop = asyncio.new_event_loop()
    try:
        _deserialize(framework, artifacts[0])(row)  # one-time runtime initialisation
        out: dict[str, list[float]] = {"load": [], "load+predict": []}
        for data in artifacts:
            key = artifact_key(sha256_hex(data))
            t0 = time.perf_counter()
            got = loop.run_until_complete(store.get(key))
            predict = _deserialize(framework, got)
            t1 = time.perf_counter()
            predict(row)
            t2 = time.perf_counter()
            out["load"].append(t1 - t0)
            out["load+predict"].append(t2 - t0)
        return out
    finally:
        loop.close()


# --- Shoal ----------------------------------------------------------------------------------


class WorkerClient:
    """Sync unary calls to one worker over one connected channel."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self._infer = self.channel.unary_unary(INFER_PATH)
        self._meta = self.channel.unary_unary(
            META_PATH,
            request_serializer=pb.ModelMetadataRequest.SerializeToString,
            response_deserializer=pb.ModelMetadataResponse.FromString,
        )

    def metadata(self, model: str) -> Any:
        return self._meta(pb.ModelMetadataRequest(name=model), timeout=30)

    def timed_infer(self, body: bytes) -> float:
        t0 = time.perf_counter()
        self._infer(body, timeout=60)
        return time.perf_counter() - t0

    def close(self) -> None:
        self.channel.close()


def shoal_times(
    sb: ShoalBench,
    models: dict[str, BenchModel],
    arts: dict[str, list[bytes]],
    twins: bool,
) -> dict[str, dict[str, list[float]]]:
    """Register every artifact (and its twin), then time cold, warm and disk-tier calls."""
    items = []
    for key, datas in arts.items():
        items.append((TENANT, f"{key}-warmup", datas[0]))
        for i, data in enumerate(datas):
            items.append((TENANT, f"{key}-{i}", data))
            if twins:
                items.append((TENANT, f"{key}-{i}-twin", data))
    sb.bulk_register(items)
    client = WorkerClient(sb.worker_address())
    times: dict[str, dict[str, list[float]]] = {
        k: {"cold": [], "warm": [], "disk": []} for k in arts
    }
    try:
        for key, m in models.items():
            body = infer_request(f"{TENANT}/{key}-warmup", m.row, m.input_name)
            wait_for("worker sees the records", partial(client.timed_infer, body))
        n = len(next(iter(arts.values())))
        for i in range(n):
            for key, m in models.items():  # interleaved, so drift hits every framework alike
                name = f"{TENANT}/{key}-{i}"
                body = infer_request(name, m.row, m.input_name)
                client.metadata(name)
                times[key]["cold"].append(client.timed_infer(body))
                times[key]["warm"].append(client.timed_infer(body))
                if twins:
                    client.metadata(name + "-twin")
                    twin = infer_request(name + "-twin", m.row, m.input_name)
                    times[key]["disk"].append(client.timed_infer(twin))
    finally:
        client.close()
    return times


def _ms(xs: list[float], q: float = 50) -> float:
    return float(np.percentile(np.asarray(xs) * 1000.0, q)) if xs else float("nan")


def main() -> int:
    cfg = BenchConfig.from_env()
    from shoal.devservers import LocalSeaweedS3

    models = bench_models()
    print(f"training {cfg.cold_repeats} distinct artifacts per framework ...", flush=True)
    arts = {k: variants(k, cfg.cold_repeats, seed=7) for k in models}
    results: dict[str, Any] = {}
    floors: dict[str, Any] = {}
    with scratch("cold", cfg.keep) as tmp:
        print("== file:// store (and disk tier)", flush=True)
        sb = ShoalBench(tmp / "file", workers=1, shard_size=1, worker_env=WORKER_ENV).start()
        try:
            results["file"] = shoal_times(sb, models, arts, twins=True)
            store = ObjectStore(sb.c.store)
            floors["file"] = {k: floor_times(store, m.framework, arts[k], m.row)
                              for k, m in models.items()}  # fmt: skip
        finally:
            sb.stop()
        print("== S3 store (SeaweedFS)", flush=True)
        s3 = LocalSeaweedS3(tmp / "seaweed").start()
        try:
            s3.create_bucket(BUCKET)
            url = f"s3://{BUCKET}/objects"
            env = {"SHOAL_S3_ENDPOINT": s3.endpoint}
            sb = ShoalBench(tmp / "s3", workers=1, shard_size=1, worker_env=WORKER_ENV,
                            env=env, store=url).start()  # fmt: skip
            try:
                results["s3"] = shoal_times(sb, models, arts, twins=False)
                store = ObjectStore(url, CommonSettings(s3_endpoint=s3.endpoint))
                floors["s3"] = {k: floor_times(store, m.framework, arts[k], m.row)
                                for k, m in models.items()}  # fmt: skip
            finally:
                sb.stop()
        finally:
            s3.stop()
    figs: list[dict[str, Any]] = []
    for key in models:
        fl, fs = floors["file"][key], floors["s3"][key]
        cold_file, disk = results["file"][key]["cold"], results["file"][key]["disk"]
        cold_s3 = results["s3"][key]["cold"]
        for label, xs, floor in (("file:// store", cold_file, fl), ("disk tier", disk, fl)):
            v = _ms(xs) / _ms(floor["load"])
            figs.append(figure(f"{key}: cold first prediction ({label}) / floor", v, "x",
                               "<= 3", v <= 3))  # fmt: skip
        v = _ms(cold_s3) / _ms(fs["load"])
        figs.append(figure(f"{key}: cold first prediction (S3) / floor (S3)", v, "x"))
        for label, xs in (("file:// store", cold_file), ("disk tier", disk), ("S3", cold_s3),
                          ("warm call after it", results["file"][key]["warm"])):  # fmt: skip
            figs.append(figure(f"{key}: first prediction, {label}, p50", _ms(xs), "ms"))
            figs.append(figure(f"{key}: first prediction, {label}, p90", _ms(xs, 90), "ms"))
        for label, f in (("file://", fl), ("S3", fs)):
            figs.append(figure(f"{key}: floor fetch+deserialize ({label}), p50",
                               _ms(f["load"]), "ms"))  # fmt: skip
            figs.append(figure(f"{key}: floor fetch+deserialize+predict ({label}), p50",
                               _ms(f["load+predict"]), "ms"))  # fmt: skip
    extra = {
        "config": cfg.as_dict(),
        "worker_env": WORKER_ENV,
        "artifact_bytes": {k: [len(a) for a in v] for k, v in arts.items()},
        "shoal_seconds": results,
        "floor_seconds": floors,
    }
    path = write_results("cold", figs, extra)
    for f in figs:
        if "/ floor" in f["name"]:
            met = {True: "met", False: "NOT MET", None: ""}[f["met"]]
            print(f"  {f['name']}: {f['value']:.3g} {f['unit']} {met}")
    print(f"wrote {path} and {path.with_suffix('.md').name}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
