"""Warm path (issue 8, item 1): 1-row predictions against Shoal, MLServer and the Python floor.

What is measured: closed-loop ModelInfer calls carrying one row of 30 float32 features (the
first row of scikit-learn's breast cancer table, as ``raw_input_contents``) to a model that
is already resident, at each concurrency of ``BENCH_CONCURRENCY`` (1 and 32), for

* **router**: Shoal through its router (a ``LocalCluster`` of etcd, placement, one worker and
  the router as real processes; models registered through the control plane, ``stable``
  alias), i.e. two gRPC hops; the router's data path is the native gateway;
* **worker**: the same worker called directly (one hop), so ``router - worker`` is what
  routing costs;
* **nginx**: nginx ``grpc_pass`` in front of the same worker (``bench.nginx``): what a native
  proxy hop costs on this machine, the reference the gateway is held to;
* **mlserver**: MLServer (``bench.peers``, its own venv, one process, the same artifact bytes;
  XGBoost and LightGBM only: MLServer's peer set has no ONNX runtime);
* **echo**: a bare grpc.aio server returning a fixed response (``bench.echo_server``), the
  ceiling of any one-hop Python gRPC server on this machine.

Models (``bench.models``): XGBoost 100 trees (JSON), LightGBM 100 trees (text), a small ONNX
MLP. Load comes from h2load (C, one thread; see ``bench.loadgen``), which reports latencies
per request; client and server CPU are read from ``/proc`` over each phase. Servers run one at
a time (echo, then Shoal, then MLServer), so they do not compete for the 2 cores.

Ratios and the issues' targets: router/worker-direct req/s at concurrency 32 (>= 0.9x), the
router's added p50 at concurrency 1 over the worker direct (<= 0.1 ms, i.e. below nginx's),
the router process's CPU per request (<= 80 µs), router/MLServer req/s at concurrency 32
(>= 5x), router p99 vs MLServer p99 (lower), router/echo req/s (>= 0.5x); and the native
worker front's (issue 16): worker-direct/echo req/s at concurrency 32 (>= 1x), and the
worker's CPU per 1-row request (at concurrency 1 and 32) within 2x the in-process cost of
one 1-row prediction through the library's C API (``shoal._native.TreeBooster``, measured in
this process, same run). Written with ``bench.common.write_results("warm", ...)``.

Run alone: ``.venv/bin/python -m bench.bench_warm`` (``BENCH_SMOKE=1`` for a < 1 minute
plumbing check; see ``bench.config`` for every knob).
"""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a file: python bench/bench_warm.py
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench.common import figure, write_results
from bench.config import BenchConfig, scratch, wait_for
from bench.echo_server import EchoProcess
from bench.loadgen import Load, LoadResult, h2load_version, run_load
from bench.models import BenchModel, bench_models
from bench.nginx import NginxProxy, nginx_version
from bench.peers import IMPLEMENTATIONS, MLServerProcess, PeerModel, installed_versions
from bench.shoal_harness import ShoalBench
from bench.wire import infer_once, infer_request

TENANT = "bench"
#: Worker settings for the warm path: CPU only, defaults otherwise (what `shoal up` runs).
WORKER_ENV = {"SHOAL_DEVICE": "cpu", "SHOAL_HOST_BUDGET": "1GiB"}


NO_ONNX = (
    "\nMLServer has no ONNX runtime in the peer set (mlserver-xgboost, mlserver-lightgbm): "
    "ONNX is compared with the echo floor only.\n"
)


class Runs:
    """Every load phase of this run, keyed by (server, model, concurrency)."""

    def __init__(self) -> None:
        self.by_key: dict[tuple[str, str, int], LoadResult] = {}

    def add(self, server: str, model: str, res: LoadResult) -> None:
        self.by_key[(server, model, res.concurrency)] = res
        print(f"  {server:8} {model:5} c={res.concurrency:<3} {res.line()}", flush=True)

    def get(self, server: str, model: str, c: int) -> LoadResult | None:
        return self.by_key.get((server, model, c))

    def rows(self) -> list[dict[str, Any]]:
        return [{"server": s, "model": m, **r.as_dict()} for (s, m, _), r in self.by_key.items()]


def run_echo(cfg: BenchConfig, tmp: Path, body: bytes, runs: Runs) -> None:
    echo = EchoProcess(tmp).start()
    try:
        for c in cfg.concurrency:
            res = run_load(echo.address, body, Load(c, cfg.duration_s, cfg.warmup_s),
                           {"echo": echo.pid})  # fmt: skip
            runs.add("echo", "-", res)
    finally:
        echo.stop()


def run_shoal(cfg: BenchConfig, tmp: Path, models: dict[str, BenchModel], runs: Runs) -> None:
    sb = ShoalBench(tmp / "shoal", workers=1, shard_size=1, worker_env=WORKER_ENV).start()
    nginx: NginxProxy | None = None
    try:
        for key, m in models.items():
            sb.register(TENANT, key, m.data)
        pids = {"router": sb.router_pid, "worker": sb.worker_pid()}
        try:
            nginx = NginxProxy(tmp / "nginx", sb.worker_address()).start()
        except RuntimeError as exc:  # no nginx to be had: the reference rows are missing
            print(f"  nginx reference skipped: {exc}", flush=True)
        for key, m in models.items():
            body = infer_request(f"{TENANT}/{key}", m.row, m.input_name)
            # The router learns of the new record through its etcd watch: wait for it.
            wait_for(f"{key} through the router", partial(infer_once, sb.router_address, body))
            for c in cfg.concurrency:
                load = Load(c, cfg.duration_s, cfg.warmup_s)
                runs.add("router", key, run_load(sb.router_address, body, load, pids))
                direct = {"worker": pids["worker"]}
                runs.add("worker", key, run_load(sb.worker_address(), body, load, direct))
                if nginx is not None:
                    proxied = {"nginx": nginx.pid, "worker": pids["worker"]}
                    runs.add("nginx", key, run_load(nginx.address, body, load, proxied))
    finally:
        if nginx is not None:
            nginx.stop()
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
        for p in peer:
            m = models[p.name]
            body = infer_request(p.name, m.row, m.input_name)
            for c in cfg.concurrency:
                load = Load(c, cfg.duration_s, cfg.warmup_s)
                runs.add(
                    "mlserver", p.name, run_load(ml.grpc_address, body, load, {"mlserver": ml.pid})
                )
    finally:
        ml.stop()
    return {"env": env, "versions": installed_versions(), "served": [p.name for p in peer]}


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def figures(cfg: BenchConfig, runs: Runs, models: dict[str, BenchModel]) -> list[dict[str, Any]]:
    """Headline ratios (with the issue's targets), then each phase's req/s, p50 and p99."""
    out: list[dict[str, Any]] = []
    hi = 32 if 32 in cfg.concurrency else max(cfg.concurrency)
    lo = 1 if 1 in cfg.concurrency else min(cfg.concurrency)
    for key in models:
        out += _gateway_figures(runs, key, lo, hi)
        out += _front_figures(runs, models[key], lo, hi)
        r_hi, m_hi = runs.get("router", key, hi), runs.get("mlserver", key, hi)
        if r_hi and m_hi:
            v = _ratio(r_hi.rps, m_hi.rps)
            out.append(figure(f"{key}: router/MLServer req/s, c={hi}", v, "x", ">= 5", v >= 5))
        for c in cfg.concurrency:
            r, m = runs.get("router", key, c), runs.get("mlserver", key, c)
            if r and m:
                v = _ratio(r.p99_ms, m.p99_ms)
                out.append(figure(f"{key}: router p99 / MLServer p99, c={c}", v, "x", "< 1", v < 1))
        for c in cfg.concurrency:
            r, e = runs.get("router", key, c), runs.get("echo", "-", c)
            if r and e:
                v = _ratio(r.rps, e.rps)
                out.append(figure(f"{key}: router/echo req/s, c={c}", v, "x", ">= 0.5", v >= 0.5))
        w_hi = runs.get("worker", key, hi)
        if w_hi and m_hi:
            v = _ratio(w_hi.rps, m_hi.rps)
            out.append(figure(f"{key}: worker/MLServer req/s, c={hi}", v, "x"))
    for (server, model, c), res in runs.by_key.items():
        label = f"{server} {model} c={c}" if model != "-" else f"{server} c={c}"
        out.append(figure(f"{label}: req/s", res.rps, "req/s"))
        out.append(figure(f"{label}: p50", res.p50_ms, "ms"))
        out.append(figure(f"{label}: p99", res.p99_ms, "ms"))
    return out


def _cpu_us(res: LoadResult, server: str) -> float:
    return res.server_cpu_by.get(server, 0.0) * 1e6 / max(res.requests, 1)


def _gateway_figures(runs: Runs, key: str, lo: int, hi: int) -> list[dict[str, Any]]:
    """Issue 15's targets: what the router's native hop costs, beside nginx's."""
    out: list[dict[str, Any]] = []
    r_hi, w_hi, n_hi = (runs.get(s, key, hi) for s in ("router", "worker", "nginx"))
    if r_hi and w_hi:
        v = _ratio(r_hi.rps, w_hi.rps)
        out.append(figure(f"{key}: router/worker-direct req/s, c={hi}", v, "x", ">= 0.9", v >= 0.9))
    if n_hi and w_hi:
        out.append(
            figure(f"{key}: nginx/worker-direct req/s, c={hi}", _ratio(n_hi.rps, w_hi.rps), "x")
        )
    r, w, n = (runs.get(s, key, lo) for s in ("router", "worker", "nginx"))
    if r and w:
        v = r.p50_ms - w.p50_ms
        out.append(
            figure(f"{key}: router added p50 vs worker, c={lo}", v, "ms", "<= 0.1", v <= 0.1)
        )
    if n and w:
        out.append(figure(f"{key}: nginx added p50 vs worker, c={lo}", n.p50_ms - w.p50_ms, "ms"))
    if r and n and w:
        v = (r.p50_ms - w.p50_ms) - (n.p50_ms - w.p50_ms)
        out.append(figure(f"{key}: router added p50 minus nginx's, c={lo}", v, "ms", "< 0", v < 0))
    for c in sorted({lo, hi}):
        for server in ("router", "nginx"):
            res = runs.get(server, key, c)
            if res is None:
                continue
            v = _cpu_us(res, server)
            target = ("<= 80", v <= 80) if server == "router" else ("", None)
            out.append(figure(f"{key}: {server} CPU per request, c={c}", v, "µs", *target))
    return out


def predict_cost_us(model: BenchModel, calls: int = 2000) -> float | None:
    """CPU µs of one 1-row prediction through the library's C API in this process (the
    native booster or ONNX session the worker serves with); None for models it does not
    serve natively."""
    import time

    from shoal._native import OnnxSession, TreeBooster
    from shoal.frameworks import native

    if not native.available(model.framework):
        return None
    row = np.ascontiguousarray(model.row, dtype=np.float32)
    if model.framework == "onnx":
        session = OnnxSession.load(model.data)
        feed = [("FP32", list(row.shape), row.tobytes())]

        def call() -> object:
            return session.run(feed)

    elif model.framework in ("xgboost", "lightgbm"):
        booster = TreeBooster.load(model.framework, model.data)

        def call() -> object:
            return booster.predict(row)

    else:
        return None
    for _ in range(50):
        call()
    started = time.thread_time()
    for _ in range(calls):
        call()
    return (time.thread_time() - started) * 1e6 / calls


def _front_figures(runs: Runs, model: BenchModel, lo: int, hi: int) -> list[dict[str, Any]]:
    """Issue 16's targets: the native worker front against the echo floor and the C API."""
    out: list[dict[str, Any]] = []
    key = model.key
    w_hi, e_hi = runs.get("worker", key, hi), runs.get("echo", "-", hi)
    if w_hi and e_hi:
        v = _ratio(w_hi.rps, e_hi.rps)
        out.append(figure(f"{key}: worker-direct/echo req/s, c={hi}", v, "x", ">= 1", v >= 1))
    cost = predict_cost_us(model)
    if cost is None:
        return out
    out.append(figure(f"{key}: in-process C-API predict, 1 row", cost, "µs"))
    for c in sorted({lo, hi}):
        res = runs.get("worker", key, c)
        if res is None:
            continue
        v = _cpu_us(res, "worker")
        out.append(figure(f"{key}: worker CPU per request, c={c}", v, "µs"))
        r = _ratio(v, cost)
        out.append(figure(f"{key}: worker CPU / C-API predict, c={c}", r, "x", "<= 2", r <= 2))
    return out


def _checks(r: LoadResult) -> str:
    """'ok' when the calls before and after the phase and h2load's probe all answered OK."""
    bad = [k for k in ("probe_ok", "after_ok") if r.checks.get(k) is False]
    return "ok" if not bad else "**failed: " + ", ".join(bad) + "**"


def runs_table(runs: Runs) -> str:
    lines = [
        "",
        "## Phases",
        "",
        "| server | model | c | req/s | p50 ms | p99 ms | errors | server CPU µs/req | "
        "client CPU µs/req | client CPU % of a core | host CPU steal % | tool | gRPC checks |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (server, model, c), r in runs.by_key.items():
        by = ", ".join(
            f"{k} {v * 1e6 / max(r.requests, 1):.0f}" for k, v in r.server_cpu_by.items()
        )
        lines.append(
            f"| {server} | {model} | {c} | {r.rps:.0f} | {r.p50_ms:.3f} | {r.p99_ms:.3f} | "
            f"{r.errors} | {r.server_cpu_us_per_req:.0f} ({by}) | {r.client_cpu_us_per_req:.0f} | "
            f"{100 * r.client_cpu_s / r.duration_s:.0f} | {r.host_steal_pct:.1f} | {r.tool} | "
            f"{_checks(r)} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    cfg = BenchConfig.from_env()
    all_models = bench_models()
    models = {k: all_models[k] for k in cfg.models}
    first = next(iter(models.values()))
    runs = Runs()
    extra: dict[str, Any] = {"config": cfg.as_dict(), "h2load": h2load_version(),
                             "nginx": nginx_version(), "worker_env": WORKER_ENV}  # fmt: skip
    extra["models"] = {
        k: {"format": m.format, "sha256": m.sha256, "bytes": m.size} for k, m in models.items()
    }
    with scratch("warm", cfg.keep) as tmp:
        print("== echo (bare grpc.aio floor)", flush=True)
        run_echo(cfg, tmp, infer_request(f"{TENANT}/echo", first.row, first.input_name), runs)
        print("== shoal (router, worker direct, nginx in front of the worker)", flush=True)
        run_shoal(cfg, tmp, models, runs)
        print("== mlserver", flush=True)
        extra["mlserver"] = run_mlserver(cfg, tmp, models, runs)
    extra["mlserver"]["not_served"] = [
        k for k, m in models.items() if m.format not in IMPLEMENTATIONS
    ]
    extra["runs"] = runs.rows()
    figs = figures(cfg, runs, models)
    path = write_results("warm", figs, extra)
    with path.with_suffix(".md").open("a") as md:
        md.write(runs_table(runs))
        if extra["mlserver"]["not_served"]:
            md.write(NO_ONNX)
    for f in figs:
        if f["target"]:
            met = {True: "met", False: "NOT MET", None: ""}[f["met"]]
            print(f"  {f['name']}: {f['value']:.3g} {f['unit']} (target {f['target']}: {met})")
    print(f"wrote {path} and {path.with_suffix('.md').name}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
