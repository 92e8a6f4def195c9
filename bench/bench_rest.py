"""REST (issue 18): 1-row predictions over KServe V2 REST through Shoal's router, beside the
same model over gRPC through the router and beside MLServer's REST, in one run.

What is measured: closed-loop calls carrying one row of 30 float32 features to a resident
model at each concurrency of ``BENCH_CONCURRENCY`` (1 and 32), for

* **rest**: ``POST /v2/models/bench/<model>/infer`` with a JSON body on the router's REST
  port (the native gateway converts JSON to the worker's ModelInfer and back);
* **grpc**: ``ModelInfer`` through the router (the same cluster, raw_input_contents);
* **mlserver-rest**: MLServer's V2 REST endpoint (its HTTP port, same artifact bytes,
  XGBoost and LightGBM: the peer set has no ONNX runtime).

Load comes from h2load (``bench.loadgen``): HTTP/1.1 (``--h1``) for REST, one request in
flight per connection; HTTP/2 for gRPC. Every non-200 answer counts as an error; one call
before and one after each run must answer with outputs. Ratios, same run: rest/mlserver-rest
req/s at c=32 (target >= 1: Shoal's REST is not slower than MLServer's), rest p99 vs
MLServer's (lower), and rest/grpc req/s (what JSON costs over protobuf on this path, no
target). Written with ``bench.common.write_results("rest", ...)``.

Run alone: ``.venv/bin/python -m bench.bench_rest`` (``BENCH_SMOKE=1`` for a quick check).
"""

from __future__ import annotations

import json
import sys
import urllib.request
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: python bench/bench_rest.py
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench.common import figure, write_results
from bench.config import BenchConfig, scratch, wait_for
from bench.loadgen import (
    Http,
    Load,
    LoadResult,
    ensure_h2load,
    h2load_version,
    run_h2load,
    run_load,
)
from bench.models import BenchModel, bench_models
from bench.peers import IMPLEMENTATIONS, MLServerProcess, PeerModel, installed_versions
from bench.shoal_harness import ShoalBench
from bench.wire import infer_once, infer_request

TENANT = "bench"
WORKER_ENV = {"SHOAL_DEVICE": "cpu", "SHOAL_HOST_BUDGET": "1GiB"}


def run_rest_load(
    address: str,
    path: str,
    body: bytes,
    load: Load,
    servers: Mapping[str, int] | None = None,
    headers: Sequence[str] = (),
) -> LoadResult:
    """Drive a REST endpoint (``POST http://address/path`` with a JSON ``body``) with h2load
    over HTTP/1.1, one request in flight per connection. A REST failure is an HTTP status,
    which h2load records per request: every non-200 counts as an error. One call before and
    one after the run must answer 200 with JSON holding ``outputs``."""
    h2load = ensure_h2load()
    if h2load is None:
        raise RuntimeError("REST load needs h2load (nghttp2-client)")
    http = Http(
        path=path,
        headers=("content-type: application/json", *headers),
        h1=True,
        grpc_framed=False,
    )

    def once() -> int:
        req = urllib.request.Request(
            f"http://{address}{path}",
            data=body,
            headers=dict(h.split(": ", 1) for h in http.headers),
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            doc = json.loads(r.read())
        if "outputs" not in doc:
            raise RuntimeError(f"REST answer without outputs: {str(doc)[:200]}")
        return len(json.dumps(doc))

    checks: dict[str, Any] = {"response_bytes": once()}
    result = run_h2load(h2load, address, body, load, dict(servers or {}), http)
    try:
        once()
        checks["after_ok"] = True
    except Exception as exc:
        checks["after_ok"] = False
        checks["after_error"] = str(exc)[:300]
    result.checks = checks
    return result


def rest_body(m: BenchModel) -> bytes:
    row = [float(v) for v in m.row.reshape(-1)]
    return json.dumps(
        {"inputs": [{"name": m.input_name, "shape": [1, len(row)], "datatype": "FP32",
                     "data": row}]}
    ).encode()  # fmt: skip


class Runs:
    def __init__(self) -> None:
        self.by_key: dict[tuple[str, str, int], LoadResult] = {}

    def add(self, server: str, model: str, res: LoadResult) -> None:
        self.by_key[(server, model, res.concurrency)] = res
        print(f"  {server:13} {model:5} c={res.concurrency:<3} {res.line()}", flush=True)

    def get(self, server: str, model: str, c: int) -> LoadResult | None:
        return self.by_key.get((server, model, c))


def run_shoal(cfg: BenchConfig, tmp: Path, models: dict[str, BenchModel], runs: Runs) -> None:
    sb = ShoalBench(tmp / "shoal", workers=1, shard_size=1, worker_env=WORKER_ENV).start()
    try:
        for key, m in models.items():
            sb.register(TENANT, key, m.data)
        pids = {"router": sb.router_pid, "worker": sb.worker_pid()}
        assert sb.c.router is not None
        rest = sb.c.router.extra["rest"]
        for key, m in models.items():
            body = infer_request(f"{TENANT}/{key}", m.row, m.input_name)
            wait_for(f"{key} through the router", partial(infer_once, sb.router_address, body))
            for c in cfg.concurrency:
                load = Load(c, cfg.duration_s, cfg.warmup_s)
                path = f"/v2/models/{TENANT}/{key}/infer"
                runs.add("rest", key, run_rest_load(rest, path, rest_body(m), load, pids))
                runs.add("grpc", key, run_load(sb.router_address, body, load, pids))
    finally:
        sb.stop()


def run_mlserver(
    cfg: BenchConfig, tmp: Path, models: dict[str, BenchModel], runs: Runs
) -> dict[str, Any]:
    peer = [
        PeerModel(k, m.format, m.data) for k, m in models.items() if m.format in IMPLEMENTATIONS
    ]
    if not peer:
        return {}
    env = {"OMP_NUM_THREADS": cfg.mlserver_omp_threads} if cfg.mlserver_omp_threads else {}
    ml = MLServerProcess(tmp / "mlserver", peer, env=env).start()
    try:
        address = f"127.0.0.1:{ml.http_port}"
        for p in peer:
            for c in cfg.concurrency:
                load = Load(c, cfg.duration_s, cfg.warmup_s)
                res = run_rest_load(
                    address, f"/v2/models/{p.name}/infer", rest_body(models[p.name]), load,
                    {"mlserver": ml.pid},
                )  # fmt: skip
                runs.add("mlserver-rest", p.name, res)
    finally:
        ml.stop()
    return {"env": env, "versions": installed_versions(), "served": [p.name for p in peer]}


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def figures(cfg: BenchConfig, runs: Runs, models: dict[str, BenchModel]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    hi = 32 if 32 in cfg.concurrency else max(cfg.concurrency)
    for key in models:
        r_hi, m_hi, g_hi = (runs.get(s, key, hi) for s in ("rest", "mlserver-rest", "grpc"))
        if r_hi and m_hi:
            v = _ratio(r_hi.rps, m_hi.rps)
            out.append(figure(f"{key}: REST/MLServer REST req/s, c={hi}", v, "x", ">= 1", v >= 1))
        for c in cfg.concurrency:
            r, m = runs.get("rest", key, c), runs.get("mlserver-rest", key, c)
            if r and m:
                v = _ratio(r.p99_ms, m.p99_ms)
                out.append(
                    figure(f"{key}: REST p99 / MLServer REST p99, c={c}", v, "x", "< 1", v < 1)
                )
        if r_hi and g_hi:
            out.append(figure(f"{key}: REST/gRPC req/s, c={hi}", _ratio(r_hi.rps, g_hi.rps), "x"))
    for (server, model, c), res in runs.by_key.items():
        label = f"{server} {model} c={c}"
        out.append(figure(f"{label}: req/s", res.rps, "req/s"))
        out.append(figure(f"{label}: p50", res.p50_ms, "ms"))
        out.append(figure(f"{label}: p99", res.p99_ms, "ms"))
        out.append(figure(f"{label}: errors", float(res.errors), "requests", "0", res.errors == 0))
    return out


def main() -> int:
    cfg = BenchConfig.from_env()
    all_models = bench_models()
    models = {k: all_models[k] for k in cfg.models}
    runs = Runs()
    extra: dict[str, Any] = {"config": cfg.as_dict(), "h2load": h2load_version(),
                             "worker_env": WORKER_ENV}  # fmt: skip
    with scratch("rest", cfg.keep) as tmp:
        print("== shoal (REST and gRPC through the router)", flush=True)
        run_shoal(cfg, tmp, models, runs)
        print("== mlserver (REST)", flush=True)
        extra["mlserver"] = run_mlserver(cfg, tmp, models, runs)
    extra["runs"] = [
        {"server": s, "model": m, **r.as_dict()} for (s, m, _), r in runs.by_key.items()
    ]
    figs = figures(cfg, runs, models)
    path = write_results("rest", figs, extra)
    for f in figs:
        if f["target"]:
            met = {True: "met", False: "NOT MET", None: ""}[f["met"]]
            print(f"  {f['name']}: {f['value']:.3g} {f['unit']} (target {f['target']}: {met})")
    print(f"wrote {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
