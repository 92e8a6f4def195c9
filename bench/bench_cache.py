"""Cache policy (issue 19): W-TinyLFU against LRU on live workers, the simulator against both,
and what a rolling restart of every worker costs in cache misses.

Setup (real processes: ``bench.shoal_harness.ShoalBench`` over ``shoal.cluster.LocalCluster``):
etcd, placement, ``BENCH_CACHE_WORKERS`` (2) CPU workers, the router; shard size
``BENCH_CACHE_SHARD_SIZE`` (2); the hot-tenant controller off and the router never spilling
(the simulator's routing: every model on its primary). ``BENCH_CACHE_MODELS`` (300) tenants
``t0000000/m0``... (``shoal simulate``'s synthetic names), one tiny model each
(``BENCH_CACHE_FRAMEWORK``: xgboost, ``bench_register``'s 2-tree booster, or onnx, an 8-8-1
MLP), every artifact distinct and of the same length, so the cache charges every model the same
bytes. Worker 0 loads ``SETTLE + CALIBRATION`` models to measure that charge (over the last
``CALIBRATION``); the per-worker host budget
is ``BENCH_CACHE_FRACTION`` (0.3) of all models' bytes over the workers: the working set does
not fit.

Streams (``capacity.inputs``, seed ``BENCH_CACHE_SEED``, as ``shoal simulate`` draws them):
``BENCH_CACHE_REQUESTS`` (6,000) Zipf(``BENCH_CACHE_ZIPF``, 1.0) requests over the tenants;
the *scan* stream is the same requests with a batch job inserted every ``BENCH_CACHE_SCAN_EVERY``
(100) of them, touching ``BENCH_CACHE_SCAN_MODELS`` (100) models once each, in turn through a
permutation of all models (``add_scans``: ``--scan-every``/``--scan-models``).

Phase ``policies``: for each policy (lru, tinylfu) and stream (zipf, scan), every worker is
restarted with ``SHOAL_CACHE_POLICY`` set and an empty data folder (cold caches), one request
per worker reaches it through the router (its least popular model: the probe), then the stream
is sent in order, one request in flight. The workers' counters (``shoal_worker_cache_hits
{tier=host|gpu}``, ``..._misses{tier=memory}``) are scraped between blocks (the warm-up
boundary, each scan's start and end), so hits are attributed exactly to steady (the tenants'
own) and scan requests. The first ``BENCH_CACHE_WARMUP`` (0.25) of the requests only warm.

* steady hit rate per policy and stream; LRU's loss to the scans (zipf minus scan, target >=
  10 points: the scans are heavy enough) and the share of it TinyLFU recovers,
  ``(tinylfu_scan - lru_scan) / (lru_zipf - lru_scan)`` (target >= 0.75); TinyLFU minus LRU on
  pure Zipf (target >= 0);
* the simulator: the exact sequence sent (probes included) written as a ``--trace`` CSV, and
  ``shoal simulate --from-registry --trace FILE --policy P --budget-bytes B --warmup W
  --resident-factor FW=X`` on the live cluster's registry (members, salt, shard size), where X
  is the bytes the workers charged per resident model (``WorkerAdmin/Stats``: host bytes /
  models resident, sampled after each block) over the artifact length. Its hit rate (every
  measured request) against the live one over the same requests: target within 3 points.

Phase ``restart`` (alone: ``--phase restart``): tinylfu, cold workers, Zipf traffic through
the router, one request in flight, in a thread; after ``BENCH_CACHE_RESTART_WARM`` (4,000)
requests, ``BENCH_CACHE_RESTART_STEADY`` (4,000) measure the steady miss rate; then each worker
in turn is sent SIGTERM, waited for, and started again with the same id and data folder until
it is back in the snapshot, traffic flowing throughout; the window ends
``BENCH_CACHE_RESTART_TAIL`` (4,000) requests after the last one is back. Misses counted by the
workers (old processes scraped until they exit, new ones from zero) beyond the steady rate, as
a share of the window's requests: target <= 1% (issue 19: today a restarted worker starts cold).

Run alone: ``.venv/bin/python -m bench.bench_cache [--phase all|policies|restart]``
(``BENCH_SMOKE=1``: 100 models, 2,000 requests; ``BENCH_KEEP=1`` keeps the logs).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: python bench/bench_cache.py
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import numpy as np

from bench.cache_live import (
    ONNX_INPUT,
    ModelBodies,
    Sequential,
    artifacts,
    restart_figures,
    restart_workers,
    rolling_restart,
    send_sequential,
)
from bench.common import figure, write_results
from bench.config import scratch
from bench.shoal_harness import ShoalBench
from bench.tenants_setup import live_pool
from bench.tenants_traffic import Primaries, probe_workers
from capacity.inputs import Fleet, SizeModel, add_scans, synthetic_fleet, zipf_traffic
from shoal.artifacts import TREE_INPUT

ROOT = Path(__file__).resolve().parent.parent
SETTLE, CALIBRATION = 16, 16
CLUSTER_ENV = {"SHOAL_HOT_RATE": "0", "SHOAL_SPILL_AT": "1000000"}
WORKER_ENV = {"SHOAL_DEVICE": "cpu", "SHOAL_HOST_BUDGET": "1GiB"}  # budget: until calibrated
POLICIES = ("lru", "tinylfu")


@dataclass(frozen=True)
class CacheConfig:
    smoke: bool
    models: int
    workers: int
    shard_size: int
    fraction: float
    framework: str
    zipf: float
    requests: int
    warmup: float
    scan_every: int
    scan_models: int
    seed: int
    restart_warm: int
    restart_steady: int
    restart_tail: int
    keep: bool

    @classmethod
    def from_env(cls) -> CacheConfig:
        smoke = os.environ.get("BENCH_SMOKE", "0") not in ("", "0", "false", "no")

        def env(name: str, default: str, smoke_default: str | None = None) -> str:
            fallback = smoke_default if smoke and smoke_default is not None else default
            return os.environ.get(f"BENCH_CACHE_{name}", fallback)

        return cls(
            smoke=smoke,
            models=int(env("MODELS", "300", "100")),
            workers=int(env("WORKERS", "2")),
            shard_size=int(env("SHARD_SIZE", "2")),
            fraction=float(env("FRACTION", "0.3")),
            framework=env("FRAMEWORK", "xgboost"),
            zipf=float(env("ZIPF", "1.0")),
            requests=int(env("REQUESTS", "6000", "2000")),
            warmup=float(env("WARMUP", "0.25")),
            scan_every=int(env("SCAN_EVERY", "100")),
            scan_models=int(env("SCAN_MODELS", "100", "40")),
            seed=int(env("SEED", "0")),
            restart_warm=int(env("RESTART_WARM", "4000", "1000")),
            restart_steady=int(env("RESTART_STEADY", "4000", "1000")),
            restart_tail=int(env("RESTART_TAIL", "4000", "1000")),
            keep=os.environ.get("BENCH_KEEP", "0") not in ("", "0", "false", "no"),
        )


@dataclass(frozen=True)
class Streams:
    fleet: Fleet
    zipf: np.ndarray  # model per request
    scan: np.ndarray  # the same with the batch jobs inserted
    scan_mask: np.ndarray  # bool per request of ``scan``: a batch job's request
    restart: np.ndarray  # a longer Zipf stream for the rolling restart (another seed)


def streams(cfg: CacheConfig) -> Streams:
    """The fleet and streams exactly as ``shoal simulate --models N --seed S --zipf Z
    --requests R --scan-every E --scan-models M`` draws them (fixed sizes draw nothing)."""
    rng = np.random.default_rng(cfg.seed)
    fleet = synthetic_fleet(cfg.models, SizeModel(1), rng)
    base = zipf_traffic(fleet, cfg.zipf, cfg.requests, 1000.0, rng)
    scans = add_scans(base, fleet.n_models, cfg.scan_every, cfg.scan_models, rng)
    n_scans = len(base.requests) // cfg.scan_every
    at = np.repeat(np.arange(1, n_scans + 1) * cfg.scan_every, cfg.scan_models)
    mask = np.insert(np.zeros(len(base.requests), bool), at, True)
    n_restart = cfg.restart_warm + cfg.restart_steady + 20 * cfg.restart_tail
    restart = zipf_traffic(fleet, cfg.zipf, n_restart, 1000.0, np.random.default_rng(cfg.seed + 1))
    return Streams(fleet, base.requests, scans.requests, mask, restart.requests)


# --- one policy on one stream ----------------------------------------------------------------


@dataclass
class PolicyRun:
    policy: str
    stream: str
    requests: int  # sent, probes included
    measured: int
    steady_hit_rate: float  # measured requests that are not a batch job's
    scan_hit_rate: float
    hit_rate: float  # every measured request (what the simulator reports)
    unaccounted: float  # measured requests the counters saw neither hit nor miss for
    bytes_per_model: float
    errors: int
    wall_s: float
    predicted: float = math.nan
    sim_s: float = math.nan


def run_policy(
    sb: ShoalBench, cfg: CacheConfig, st: Streams, policy: str, stream: str, budget: int,
    art_len: int, tmp: Path,
) -> PolicyRun:  # fmt: skip
    metrics = restart_workers(sb, {"SHOAL_CACHE_POLICY": policy, "SHOAL_HOST_BUDGET": str(budget)})
    bodies = ModelBodies(st.fleet, TREE_INPUT if cfg.framework == "xgboost" else ONNX_INPUT)
    probes = probe_workers(sb, bodies, Primaries(live_pool(sb), st.fleet), metrics, cfg.models)
    reqs = st.scan if stream == "scan" else st.zipf
    scan = st.scan_mask if stream == "scan" else np.zeros(len(reqs), bool)
    trace = np.concatenate([np.array(probes, np.int64), reqs])
    is_scan = np.concatenate([np.zeros(len(probes), bool), scan])
    first = math.ceil(cfg.warmup * len(trace))  # the simulator's warm-up boundary
    edges = np.flatnonzero(np.diff(is_scan.astype(np.int8))) + 1
    cuts = sorted({first, *(int(e) for e in edges if e > first)})
    # Probes were sent already: the live stream starts after them.
    k = len(probes)
    res = send_sequential(sb, bodies, trace[k:].tolist(), [c - k for c in cuts], metrics, first - k)
    run = _tally(policy, stream, res, is_scan[k:], first - k, len(trace))
    run.bytes_per_model = float(np.mean(res.bytes_per_model)) if res.bytes_per_model else math.nan
    path = tmp / f"trace-{policy}-{stream}.csv"
    f = st.fleet
    path.write_text(
        "timestamp,tenant,model\n"
        + "".join(
            f"{i},{f.tenants[int(f.model_tenant[m])]},{f.model_names[m]}\n"
            for i, m in enumerate(trace.tolist())
        )
    )
    t0 = time.perf_counter()
    run.predicted = simulate(sb, path, policy, budget, cfg, run.bytes_per_model / art_len)
    run.sim_s = time.perf_counter() - t0
    print(
        f"  {policy:7} {stream:4}: steady {100 * run.steady_hit_rate:.1f}%, all measured "
        f"{100 * run.hit_rate:.1f}% (simulator {100 * run.predicted:.1f}%), "
        f"{run.requests} requests in {run.wall_s:.0f} s, {run.bytes_per_model:.0f} B/model",
        flush=True,
    )
    return run


def _tally(
    policy: str, stream: str, res: Sequential, is_scan: np.ndarray, first: int, total: int
) -> PolicyRun:
    h = {True: 0.0, False: 0.0}
    n = {True: 0, False: 0}
    unaccounted = 0.0
    for b in res.blocks:
        if b.start < first:
            continue
        kinds = set(is_scan[b.start : b.end].tolist())
        if len(kinds) != 1:
            raise RuntimeError(f"block [{b.start}, {b.end}) mixes scan and steady requests")
        kind = kinds.pop()
        h[kind] += b.hits
        n[kind] += b.end - b.start
        unaccounted += (b.end - b.start) - (b.hits + b.misses)
    measured = n[True] + n[False]
    return PolicyRun(
        policy=policy,
        stream=stream,
        requests=total,
        measured=measured,
        steady_hit_rate=h[False] / n[False] if n[False] else math.nan,
        scan_hit_rate=h[True] / n[True] if n[True] else math.nan,
        hit_rate=(h[True] + h[False]) / measured if measured else math.nan,
        unaccounted=unaccounted,
        bytes_per_model=math.nan,
        errors=res.errors,
        wall_s=res.wall_s,
    )


def simulate(
    sb: ShoalBench, trace: Path, policy: str, budget: int, cfg: CacheConfig, factor: float
) -> float:
    """``shoal simulate`` on the trace, against the live registry; its predicted hit rate."""
    cmd = [
        sys.executable, "-m", "shoal.cli", "simulate", "--from-registry", "--etcd",
        sb.c.etcd_url, "--trace", str(trace), "--policy", policy, "--budget-bytes", str(budget),
        "--warmup", str(cfg.warmup), "--resident-factor", f"{cfg.framework}={factor:.6f}",
        "--pairs", "1000", "--json",
    ]  # fmt: skip
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"shoal simulate failed: {out.stderr[-2000:]}")
    report: dict[str, Any] = json.loads(out.stdout)
    return float(report["cache"]["hit_rate"])


def calibrate(sb: ShoalBench, fleet: Fleet) -> float:
    """Bytes worker 0's host tier charges per model: the growth over ``CALIBRATION`` loads
    that follow ``SETTLE`` others (a worker charges its first few loads their own noisy
    measurement, later ones its median bytes per artifact byte: ``worker.sizes``)."""
    last = range(fleet.n_models - SETTLE - CALIBRATION, fleet.n_models)
    before = None
    for j, m in enumerate(last):
        if j == SETTLE:
            before = sb.worker_stats(0)
        sb.load_model(fleet.tenants[int(fleet.model_tenant[m])], fleet.model_names[m], 0)
    after = sb.worker_stats(0)
    assert before is not None
    if after.models_resident - before.models_resident != CALIBRATION:
        raise RuntimeError("calibration: the models did not all stay resident")
    return float(after.host_bytes - before.host_bytes) / CALIBRATION


# --- figures ---------------------------------------------------------------------------------


def policy_figures(runs: dict[tuple[str, str], PolicyRun]) -> list[dict[str, Any]]:
    pct = 100.0
    figs: list[dict[str, Any]] = []
    lz, ls = runs[("lru", "zipf")], runs[("lru", "scan")]
    tz, ts = runs[("tinylfu", "zipf")], runs[("tinylfu", "scan")]
    loss = pct * (lz.steady_hit_rate - ls.steady_hit_rate)
    lost = lz.steady_hit_rate - ls.steady_hit_rate
    recovered = (ts.steady_hit_rate - ls.steady_hit_rate) / lost if lost else math.nan
    gain = pct * (tz.steady_hit_rate - lz.steady_hit_rate)
    figs += [
        figure("LRU steady hit rate lost to the scans (zipf - zipf+scans)", loss, "points",
               ">= 10", loss >= 10),
        figure("share of that loss TinyLFU recovers", recovered, "fraction", ">= 0.75",
               recovered >= 0.75),
        figure("pure Zipf: TinyLFU - LRU steady hit rate", gain, "points", ">= 0", gain >= 0),
    ]  # fmt: skip
    for (policy, stream), r in runs.items():
        d = pct * abs(r.hit_rate - r.predicted)
        figs.append(figure(f"{policy} {stream}: |live - simulator| hit rate", d, "points",
                           "<= 3", d <= 3))  # fmt: skip
    for (policy, stream), r in runs.items():
        figs += [
            figure(f"{policy} {stream}: steady hit rate, live", pct * r.steady_hit_rate, "%"),
            figure(f"{policy} {stream}: hit rate (all measured), live", pct * r.hit_rate, "%"),
            figure(f"{policy} {stream}: hit rate (all measured), simulator", pct * r.predicted,
                   "%"),
        ]  # fmt: skip
        if stream == "scan":
            figs.append(figure(f"{policy} scan: batch jobs' hit rate", pct * r.scan_hit_rate, "%"))
    return figs


def note(cfg: CacheConfig, extra: dict[str, Any]) -> str:
    """The setup in words, under the table."""
    budget = extra["host_budget_per_worker"]
    text = (
        f"{cfg.models} {cfg.framework} models ({extra['artifact_bytes']} B artifacts), "
        f"{cfg.workers} workers, shard size {cfg.shard_size}, host budget {budget} B per worker "
        f"({cfg.fraction:g} of every model's bytes at rest, "
        f"{extra['calibrated_bytes_per_model']:.0f} B each, over the workers). "
    )
    runs = extra.get("policies", [])
    if runs:
        held = [budget / r["bytes_per_model"] for r in runs if r["bytes_per_model"] > 0]
        text += (
            f"Zipf({cfg.zipf:g}) streams of {cfg.requests} requests (scan stream: "
            f"{cfg.scan_models} models every {cfg.scan_every}), warm-up {cfg.warmup:g}, one "
            f"request in flight; the budget held {min(held):.1f}-{max(held):.1f} models per "
            "worker at the bytes charged while serving. "
        )
    w = extra.get("restart")
    if w:
        text += (
            f"Rolling restart: steady {w['steady_requests']} requests, window "
            f"{w['window_requests']} (restarts plus {cfg.restart_tail}), errors {w['errors']}."
        )
    return text


# --- main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--phase", choices=("all", "policies", "restart"),
                    default=os.environ.get("BENCH_CACHE_PHASE", "all"))  # fmt: skip
    phase = ap.parse_args(argv).phase
    cfg = CacheConfig.from_env()
    st = streams(cfg)
    data = artifacts(cfg.framework, cfg.models)
    extra: dict[str, Any] = {
        "config": asdict(cfg), "phase": phase, "worker_env": WORKER_ENV,
        "cluster_env": CLUSTER_ENV, "artifact_bytes": len(data[0]),
    }  # fmt: skip
    figs: list[dict[str, Any]] = []
    started = time.perf_counter()
    extra["host_budget_per_worker"] = 0
    with scratch("cache", cfg.keep) as tmp:
        sb = ShoalBench(tmp / "shoal", workers=cfg.workers, shard_size=cfg.shard_size,
                        worker_env=WORKER_ENV, env=CLUSTER_ENV).start()  # fmt: skip
        try:
            f = st.fleet
            sb.bulk_register(
                [(f.tenants[int(f.model_tenant[m])], f.model_names[m], data[m])
                 for m in range(f.n_models)]
            )  # fmt: skip
            per_model = calibrate(sb, f)
            budget = math.ceil(cfg.fraction * per_model * cfg.models / cfg.workers)
            extra |= {"calibrated_bytes_per_model": per_model, "host_budget_per_worker": budget}
            print(f"== {cfg.models} {cfg.framework} models, {per_model:.0f} B each at rest; "
                  f"host budget {budget} B per worker", flush=True)  # fmt: skip
            if phase in ("all", "policies"):
                print("== policies (one request in flight, in stream order)", flush=True)
                runs = {
                    (p, s): run_policy(sb, cfg, st, p, s, budget, len(data[0]), tmp)
                    for s in ("zipf", "scan")
                    for p in POLICIES
                }
                extra["policies"] = [asdict(r) for r in runs.values()]
                figs += policy_figures(runs)
            if phase in ("all", "restart"):
                print("== rolling restart (tinylfu) under Zipf traffic", flush=True)
                restart_workers(sb, {"SHOAL_CACHE_POLICY": "tinylfu",
                                     "SHOAL_HOST_BUDGET": str(budget)})  # fmt: skip
                bodies = ModelBodies(f, TREE_INPUT if cfg.framework == "xgboost" else ONNX_INPUT)
                w = rolling_restart(sb, bodies, st.restart, cfg.restart_warm, cfg.restart_steady,
                                    cfg.restart_tail)  # fmt: skip
                extra["restart"] = asdict(w)
                figs += restart_figures(w)
        finally:
            sb.stop()
    extra["wall_s"] = time.perf_counter() - started
    name = "cache" if phase == "all" else f"cache-{phase}"
    path = write_results(name, figs, extra)
    with path.with_suffix(".md").open("a") as md:
        md.write("\n" + note(cfg, extra) + "\n")
    for fig in figs:
        met = {True: "met", False: "NOT MET", None: ""}[fig["met"]]
        target = f" (target {fig['target']}: {met})" if fig["target"] else ""
        print(f"  {fig['name']}: {fig['value']:.4g} {fig['unit']}{target}", flush=True)
    print(f"wrote {path} after {extra['wall_s']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
