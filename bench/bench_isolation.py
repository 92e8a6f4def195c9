"""Tenant isolation (issue 9, item 2): a flooding tenant against a steady one.

What is measured: the latency a well-behaved tenant sees while another tenant floods.

* **Cluster**: a ``LocalCluster`` (etcd, placement, ONE worker, router as real processes), so
  both tenants share the same router and the same worker — the worst case; shuffle sharding
  would often give them disjoint workers. The router's per-tenant quotas are set for every
  tenant (``SHOAL_TENANT_RATE_LIMIT`` = ``BENCH_ISO_TENANT_RATE`` req/s, default 200, and
  ``SHOAL_TENANT_MAX_IN_FLIGHT`` = ``BENCH_ISO_TENANT_IN_FLIGHT``, default 16, with the
  router's admission queue ``SHOAL_TENANT_QUEUE_S`` = ``BENCH_ISO_TENANT_QUEUE_S``, default
  0.5 s, its production default); the worker runs with its defaults (per-model concurrency
  bound included).
* **Model**: the 100-tree XGBoost of ``bench.models``, registered as ``steady/churn`` and
  ``flood/churn``; 1-row requests.
* **Steady tenant**: open loop at ``BENCH_ISO_RATE`` req/s (default 100) from this process
  (grpc.aio; a request is sent on schedule whether or not earlier ones have answered), for
  ``BENCH_DURATION`` seconds after ``BENCH_WARMUP`` seconds of warm-up; latency of every call
  of the main phase.
* **Flood**: ``BENCH_ISO_FLOOD`` (default 64) closed-loop callers, far above the flood
  tenant's quota: each resends as soon as it is answered, OK or RESOURCE_EXHAUSTED. They are
  h2load's (C, one thread: ``bench.loadgen``), so the load generator takes little of the CPU
  the servers share with it; without h2load, Python callers in a child process (these cost
  about a core on their own, and the results say which ran). Admitted, refused and queued
  counts come from the router's ``shoal_router_requests{code}`` and
  ``shoal_router_quota_queued``, over the loaded phase's window, which starts one second
  after the flood (its burst of one second of quota spent), so admitted/s is the sustained
  rate the quota allows.

Phases: *unloaded* (steady tenant alone), then *loaded* (the same with the flood running),
repeated ``BENCH_ISO_ROUNDS`` times (default 3, each phase measuring ``BENCH_DURATION`` /
2 seconds): the latencies of each condition are pooled over its rounds, so a burst of
interference from outside (another VM on the host: CPU steal, recorded per condition from
``/proc/stat``) lands on both conditions alike instead of deciding the ratio on its own.
Figures: the steady tenant's p50/p99 in each condition, the p99 ratio loaded/unloaded (target
<= 2x, issue 9), its errors under load (target 0), the flood's offered and admitted rates,
and the router's and worker's CPU use during the loaded phase (on a small machine the router
CPU spent refusing the flood is what the steady tenant competes with). Written with
``bench.common.write_results("isolation", ...)``.

Run alone: ``.venv/bin/python -m bench.bench_isolation`` (about 45 s; ``BENCH_SMOKE=1``
for a plumbing check).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from functools import partial
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: python bench/bench_isolation.py
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import grpc
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from bench.common import figure, write_results
from bench.config import BenchConfig, scratch, wait_for
from bench.loadgen import GRPC_HEADERS, ensure_h2load
from bench.models import bench_models
from bench.procutil import host_cpu_ticks, steal_share, tree_cpu_seconds
from bench.shoal_harness import ShoalBench
from bench.wire import INFER_PATH, grpc_frame, infer_once, infer_request

STEADY, FLOOD = "steady/churn", "flood/churn"
TARGET_RATIO = 2.0


def _env_num(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


# --- the flood (a child process) ------------------------------------------------------------


async def _flood(address: str, body: bytes, concurrency: int, duration_s: float) -> dict[str, Any]:
    """``concurrency`` closed-loop callers for ``duration_s``; counts answers by status."""
    counts: dict[str, int] = {}
    stop_at = time.monotonic() + duration_s
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_unary(INFER_PATH)

        async def caller() -> None:
            while time.monotonic() < stop_at:
                try:
                    await call(body, timeout=10)
                    code = "OK"
                except grpc.aio.AioRpcError as exc:
                    code = exc.code().name
                counts[code] = counts.get(code, 0) + 1

        await asyncio.gather(*(caller() for _ in range(concurrency)))
    return {"counts": counts, "duration_s": duration_s, "concurrency": concurrency}


def _flood_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="bench.bench_isolation flood")
    p.add_argument("address")
    p.add_argument("body", type=Path)
    p.add_argument("concurrency", type=int)
    p.add_argument("duration", type=float)
    p.add_argument("out", type=Path)
    ns = p.parse_args(argv)
    res = asyncio.run(_flood(ns.address, ns.body.read_bytes(), ns.concurrency, ns.duration))
    ns.out.write_text(json.dumps(res))
    return 0


# --- the steady tenant ----------------------------------------------------------------------


async def _steady(
    address: str, body: bytes, rate: float, warmup_s: float, duration_s: float
) -> tuple[list[float], dict[str, int], dict[str, int]]:
    """Open loop at ``rate`` req/s: latencies (ms) and errors of the calls sent after the
    warm-up, and the status counts of every call (warm-up included)."""
    lat: list[float] = []
    errors: dict[str, int] = {}
    codes: dict[str, int] = {}
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_unary(INFER_PATH)

        async def one(measured: bool) -> None:
            t0 = time.perf_counter()
            try:
                await call(body, timeout=10)
            except grpc.aio.AioRpcError as exc:
                name = exc.code().name
                codes[name] = codes.get(name, 0) + 1
                if measured:
                    errors[name] = errors.get(name, 0) + 1
                return
            codes["OK"] = codes.get("OK", 0) + 1
            if measured:
                lat.append((time.perf_counter() - t0) * 1000)

        start = time.monotonic()
        n = int((warmup_s + duration_s) * rate)
        tasks = []
        for i in range(n):
            due = start + i / rate
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            tasks.append(asyncio.ensure_future(one(i / rate >= warmup_s)))
        await asyncio.gather(*tasks)
    return lat, errors, codes


def _router_codes(metrics_address: str) -> tuple[dict[str, float], float]:
    """``shoal_router_requests_total`` by code, and ``shoal_router_quota_queued_total``."""
    with urllib.request.urlopen(f"http://{metrics_address}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    queued = 0.0
    for fam in text_string_to_metric_families(text):
        for smp in fam.samples:
            if smp.name == "shoal_router_requests_total":
                out[smp.labels["code"]] = smp.value
            elif smp.name == "shoal_router_quota_queued_total":
                queued = smp.value
    return out, queued


def _start_flood(
    router: str, body: bytes, concurrency: int, duration_s: float, tmp: Path
) -> tuple[subprocess.Popen[bytes], str]:
    """The flood as a child process: h2load when installed, else Python callers."""
    h2load = ensure_h2load(install=False)
    if h2load:
        body_file = tmp / "flood.grpc"
        body_file.write_bytes(grpc_frame(body))
        cmd = [
            h2load,
            "-c",
            str(concurrency),
            "-m",
            "1",
            "-t",
            "1",
            "-d",
            str(body_file),
            "-D",
            f"{max(1, round(duration_s * 1000))}ms",
        ]
        for h in GRPC_HEADERS:
            cmd += ["-H", h]
        cmd.append(f"http://{router}{INFER_PATH}")
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL), "h2load"
    body_file = tmp / "flood.bin"
    body_file.write_bytes(body)
    cmd = [
        sys.executable,
        "-m",
        "bench.bench_isolation",
        "flood",
        router,
        str(body_file),
        str(concurrency),
        str(duration_s),
        str(tmp / "flood.json"),
    ]
    here = Path(__file__).resolve().parent.parent
    return subprocess.Popen(cmd, cwd=here), "python"


def _add(into: dict[str, int], more: dict[str, int]) -> None:
    for k, v in more.items():
        into[k] = into.get(k, 0) + v


def _add_ticks(into: list[int], before: tuple[int, int], after: tuple[int, int]) -> None:
    into[0] += after[0] - before[0]
    into[1] += after[1] - before[1]


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


# --- the benchmark --------------------------------------------------------------------------


def main() -> int:
    cfg = BenchConfig.from_env()
    rate = _env_num("BENCH_ISO_RATE", 100)
    flood_c = int(_env_num("BENCH_ISO_FLOOD", 64))
    tenant_rate = _env_num("BENCH_ISO_TENANT_RATE", 200)
    tenant_in_flight = int(_env_num("BENCH_ISO_TENANT_IN_FLIGHT", 16))
    rounds = max(1, int(_env_num("BENCH_ISO_ROUNDS", 1 if cfg.smoke else 3)))
    queue_s = _env_num("BENCH_ISO_TENANT_QUEUE_S", 0.5)
    model = bench_models()["xgb"]
    with scratch("isolation", cfg.keep) as tmp:
        bench = ShoalBench(
            tmp / "cluster",
            workers=1,
            shard_size=1,
            env={
                "SHOAL_TENANT_RATE_LIMIT": str(tenant_rate),
                "SHOAL_TENANT_MAX_IN_FLIGHT": str(tenant_in_flight),
                "SHOAL_TENANT_QUEUE_S": str(queue_s),
            },
            worker_env={"SHOAL_DEVICE": "cpu", "SHOAL_HOST_BUDGET": "1GiB"},
        ).start()
        try:
            for name in (STEADY, FLOOD):
                tenant, short = name.split("/")
                bench.register(tenant, short, model.data)
            router = bench.router_address
            bodies = {n: infer_request(n, model.row, model.input_name) for n in (STEADY, FLOOD)}
            for n, body in bodies.items():
                wait_for(f"{n} to answer", partial(infer_once, router, body))

            # Other processes on the machine skew every figure: their load is recorded.
            load_avg = {"before": os.getloadavg()[0]}
            assert bench.c.router is not None
            metrics = bench.c.router.extra["metrics"]
            pids = {"router": bench.router_pid, "worker": bench.worker_pid()}
            phase_s = max(1.0, cfg.duration_s / 2)
            quiet: list[float] = []
            loud: list[float] = []
            quiet_err: dict[str, int] = {}
            loud_err: dict[str, int] = {}
            counts: dict[str, int] = {}
            queued = 0.0
            window = 0.0
            cpu_s = {k: 0.0 for k in pids}
            steal = {"unloaded": [0, 0], "loaded": [0, 0]}
            rounds_out: list[dict[str, float]] = []
            tool = ""
            for rnd in range(rounds):
                print(f"round {rnd + 1}/{rounds}: steady {rate:g} req/s alone", flush=True)
                h0 = host_cpu_ticks()
                lat, err, _ = asyncio.run(
                    _steady(router, bodies[STEADY], rate, cfg.warmup_s, phase_s)
                )
                h1 = host_cpu_ticks()
                this = {"p99_unloaded_ms": _pct(lat, 99), "steal_unloaded": steal_share(h0, h1)}
                quiet += lat
                _add(quiet_err, err)
                _add_ticks(steal["unloaded"], h0, h1)

                flood_s = 1.0 + cfg.warmup_s + phase_s + 1.5  # outlasts the measured window
                flood, tool = _start_flood(router, bodies[FLOOD], flood_c, flood_s, tmp)
                print(f"  + flood of {flood_c} {tool} callers for {flood_s:g}s", flush=True)
                try:
                    # The flood's callers are connected and have spent the tenant's burst
                    # (one second of quota): from here on, admitted requests are the
                    # sustained rate.
                    time.sleep(1.0)
                    cpu0 = {k: tree_cpu_seconds(p) for k, p in pids.items()}
                    codes0, queued0 = _router_codes(metrics)
                    h0 = host_cpu_ticks()
                    t0 = time.monotonic()
                    lat, err, steady_codes = asyncio.run(
                        _steady(router, bodies[STEADY], rate, cfg.warmup_s, phase_s)
                    )
                    codes1, queued1 = _router_codes(metrics)
                    window += time.monotonic() - t0
                    h1 = host_cpu_ticks()
                    _add_ticks(steal["loaded"], h0, h1)
                    this["steal_loaded"] = steal_share(h0, h1)
                    for k, p in pids.items():
                        cpu_s[k] += tree_cpu_seconds(p) - cpu0[k]
                finally:
                    flood.wait(timeout=flood_s + 60)
                loud += lat
                this["p99_loaded_ms"] = _pct(lat, 99)
                rounds_out.append(this)
                _add(loud_err, err)
                queued += queued1 - queued0
                # The flood's answers in the window: the router's counts less the steady's.
                _add(
                    counts,
                    {
                        code: int(
                            codes1.get(code, 0) - codes0.get(code, 0) - steady_codes.get(code, 0)
                        )
                        for code in set(codes1) | set(codes0)
                    },
                )
            load_avg["after"] = os.getloadavg()[0]
            counts = {k: v for k, v in counts.items() if v}
            cpu = {k: v / window for k, v in cpu_s.items()}
        finally:
            bench.stop()

    offered = sum(counts.values()) / window
    admitted = counts.get("OK", 0) / window
    queued_share = queued / max(1, sum(counts.values()))
    stolen = {k: (v[0] / v[1] if v[1] else 0.0) for k, v in steal.items()}
    refused = counts.get("RESOURCE_EXHAUSTED", 0) / max(1, sum(counts.values()))
    p99_q, p99_l = _pct(quiet, 99), _pct(loud, 99)
    ratio = p99_l / p99_q if p99_q else float("nan")
    loud_errors = sum(loud_err.values())
    figures = [
        figure("steady p50 unloaded", _pct(quiet, 50), "ms"),
        figure("steady p99 unloaded", p99_q, "ms"),
        figure("steady p50 under flood", _pct(loud, 50), "ms"),
        figure("steady p99 under flood", p99_l, "ms"),
        figure(
            "steady p99 under flood / unloaded",
            ratio,
            "x",
            f"<= {TARGET_RATIO:g}",
            ratio <= TARGET_RATIO,
        ),
        figure("steady errors under flood", loud_errors, "requests", "0", loud_errors == 0),
        figure("flood offered", offered, "req/s"),
        figure(
            "flood admitted (OK)",
            admitted,
            "req/s",
            f"<= {tenant_rate:g} (its quota)",
            admitted <= tenant_rate * 1.05,
        ),
        figure("flood refused (RESOURCE_EXHAUSTED)", refused * 100, "%"),
        figure("flood admitted after waiting in its queue", queued_share * 100, "%"),
        figure("router CPU under flood", cpu["router"] * 100, "% of a core"),
        figure("worker CPU under flood", cpu["worker"] * 100, "% of a core"),
        figure("host CPU steal, unloaded phases", stolen["unloaded"] * 100, "%"),
        figure("host CPU steal, loaded phases", stolen["loaded"] * 100, "%"),
        figure(
            "p99 ratio per round (loaded/unloaded), median (diagnostic)",
            float(np.median([r["p99_loaded_ms"] / r["p99_unloaded_ms"] for r in rounds_out])),
            "x",
        ),
    ]
    extra = {
        "config": {
            **cfg.as_dict(),
            "steady_rate": rate,
            "flood_concurrency": flood_c,
            "tenant_rate_limit": tenant_rate,
            "tenant_max_in_flight": tenant_in_flight,
            "tenant_queue_s": queue_s,
            "workers": 1,
            "rounds": rounds,
            "phase_s": max(1.0, cfg.duration_s / 2),
        },
        "steady_samples": {"unloaded": len(quiet), "loaded": len(loud)},
        # Per round: p99 of each phase and the host's CPU steal share during it (0-1), so a
        # round that a steal burst hit can be told from the others.
        "rounds": rounds_out,
        "steady_errors": {"unloaded": quiet_err, "loaded": loud_err},
        "flood_counts": counts,
        "measured_window_s": window,
        "flood_tool": tool,
        "load_average_1m": load_avg,
    }
    path = write_results("isolation", figures, extra)
    for i, r in enumerate(rounds_out, 1):
        print(
            f"round {i}: p99 {r['p99_unloaded_ms']:.1f} -> {r['p99_loaded_ms']:.1f} ms, steal "
            f"{r['steal_unloaded'] * 100:.1f} % -> {r['steal_loaded'] * 100:.1f} %"
        )
    for f in figures:
        print(
            f"{f['name']:<40} {f['value']:10.3f} {f['unit']:<12} {f['target']} "
            f"{'' if f['met'] is None else ('met' if f['met'] else 'NOT MET')}"
        )
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "flood":
        sys.exit(_flood_main(sys.argv[2:]))
    sys.exit(main())
