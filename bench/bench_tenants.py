"""Many tenants (issue 8, item 2): Zipf traffic over 100K tenant models, measured against
``shoal simulate``'s prediction for the same setup.

Setup (real processes, ``bench.shoal_harness.ShoalBench`` over ``shoal.cluster.LocalCluster``):
etcd, the placement service, ``BENCH_TENANTS_WORKERS`` (2) CPU workers and the router, shard
size ``BENCH_TENANTS_SHARD_SIZE`` (2, i.e. every tenant's shard is the whole pool and the
router's stable primary choice splits the models between the workers). Two settings keep the
cluster on the policy the simulator models: the hot-tenant controller is off
(``SHOAL_HOT_RATE=0``: no shard grows) and the router never spills to a non-primary member
(``SHOAL_SPILL_AT`` set out of reach; at concurrency 4 it would not trigger anyway).

1. **Models.** ``BENCH_TENANTS_MODELS`` (100,000) tenants ``t0000000/m0``... (the names
   ``shoal simulate`` gives a synthetic fleet), one model each, alternately XGBoost JSON and
   LightGBM text: the tiny boosters of ``bench.bench_register`` (trained once) turned into
   distinct valid artifacts by ``bench_register.variant`` (a per-tenant intercept or leaf
   value), so every tenant has its own sha256, object and disk-cache entry.
2. **Registration** through the control plane's bulk path: ``BENCH_TENANTS_STREAMS`` (4)
   concurrent ``BulkRegister`` streams (``ShoalBench.bulk_register``), bytes sent inline,
   ``stable`` alias. Throughput is recorded (information only; ``bench_register`` owns the
   target).
3. **Calibration of the budget.** Worker 0 loads ``CALIBRATION_SAMPLE`` models of each
   framework with ``WorkerAdmin/LoadModel``; the growth of its host tier in ``WorkerAdmin/
   Stats`` (the cache's own measured accounting, what its LRU evicts by) divided by the count
   gives the resident bytes per model of each framework. The per-worker host budget is then
   ``BENCH_TENANTS_CACHE_FRACTION`` (0.10) x the sum of every model's resident size / workers,
   i.e. the pool together holds about 10% of the models; both workers are restarted with
   ``SHOAL_HOST_BUDGET`` set to it and empty data folders (nothing warm, no disk tier left).
   The disk tier keeps its default budget (2 GiB, it holds every artifact): a miss reads the
   object store (``file://``) the first time a worker needs a model, its disk tier afterwards.
4. **Traffic.** ``BENCH_TENANTS_REQUESTS`` requests, the stream ``capacity.inputs.
   zipf_traffic`` draws for this fleet with seed ``BENCH_TENANTS_SEED`` and exponent
   ``BENCH_TENANTS_ZIPF`` (1.0): tenant of rank r with weight 1/r. 1-row ModelInfer requests
   (8 float32 features) go through the router in stream order: the first
   ``BENCH_TENANTS_WARMUP`` (0.5) of them warm the caches; the rest are measured, at
   concurrency ``BENCH_TENANTS_CONCURRENCY`` (4) except the last ``BENCH_TENANTS_CLASSIFY``
   (2,000), sent one at a time for the hit/miss latencies (below).

Figures:

* **hit rate**: from the workers' Prometheus counters, summed over workers, as deltas over
  the measured requests: ``hits{tier=host|gpu} / (hits{host|gpu} + misses{tier=memory})``;
* **hit and miss latency p50/p99** (client-side, through the router, concurrency 1): each of
  the last ``BENCH_TENANTS_CLASSIFY`` requests is classified exactly, not by a latency
  threshold: before and after it the counters of its primary worker (computed with the router's
  own code, ``shoal.shard.Placement`` and the gateway's policy ``shoal.shard.member_order``,
  from the live snapshot and salt) are scraped; a request is a hit when that worker's hit
  counter moved by one and its miss counter did not, a miss the other way round; anything else
  (it went to another worker, or something else touched the cache) is counted as unclassified
  and left out. The scrapes happen between requests, so they do not add to any latency;
* **cold load p50/p99**: the workers' ``shoal_worker_load_seconds`` histogram (fetch + verify
  + deserialize, both frameworks, both workers), deltas over the measured requests, quantiles
  interpolated within buckets as Prometheus' ``histogram_quantile`` does (bucket bounds 1,
  2.5, 5, 10, 25 ms...: a coarse figure; the miss latency above is the exact end-to-end one);
* **predicted hit rate**: ``capacity.run.simulate`` (``shoal simulate``'s Python API)
  on the same setup: the same tenants and request stream (same seed), the live pool members
  and salt, the shard size, the per-worker budget in bytes, each model's measured resident
  size, the same warm-up fraction (exact LRU replay per worker). Target: the measured hit rate
  within 3 points of it. Also recorded: the prediction of the plain synthetic setup
  (``shoal simulate --models N --workers W --shard-size K --zipf S --model-bytes <mean>
  --budget-bytes B --requests R --warmup F``: another salt, one size for every model), the
  simulator's steady state (Che's approximation, the long-run rate a finite trace does not
  reach), and a diagnostic prediction with the sizes the workers *accounted while serving*:
  every worker's ``Stats`` is sampled twice a second over the measured requests, host bytes /
  models resident gives the mean bytes the LRU charged per model, and the calibrated sizes are
  scaled to that mean. A worker measures a model as the growth of the process-wide C heap
  across its deserialisation (``shoal.frameworks``), which concurrent request handling pollutes
  and which falls back to a static estimate (about 3x these models) when not positive, so
  under traffic it charges more than the idle calibration measured and holds fewer models than
  the budget was sized for; comparing the two predictions shows how much of a gap that is.

Two requests before the traffic (one per worker, to the least popular tenants) check that the
router reaches each restarted worker; they leave 2 extra models in the caches.
Concurrent misses of one model share one load but each counts as a miss, where the replay
counts the later ones as hits; at concurrency 4 under Zipf traffic they are rare.

Sizes (default, ``BENCH_SMOKE=1``): models 100,000 (2,000), requests 60,000 (6,000) of which
half warm up, classified 2,000 (300). Why not more requests: on the 2-core machine, measured
while other jobs ran, registering 100K models took 248 s (403 models/s; placement spends ~1.8
ms of CPU validating and recording each) and the traffic ran at ~200 req/s (a miss costs a
worker several ms of CPU), so 100K requests made a 14-minute run. With 60K requests (30K
measured after 30K of warm-up) the budget still binds (the simulator's replay: ~74% hit rate
with the budget, ~77% with an unbounded one) and the sampling error of the hit rate is ~0.3
points; expect about 6-7 minutes on a quiet machine. ``BENCH_KEEP=1`` keeps the cluster's
folder (logs).

Run alone: ``.venv/bin/python -m bench.bench_tenants``.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: python bench/bench_tenants.py
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import numpy as np

from bench.common import figure, write_results
from bench.config import scratch
from bench.shoal_harness import ShoalBench
from bench.tenants_setup import (
    CALIBRATION_SAMPLE,
    CLUSTER_ENV,
    FRAMEWORKS,
    WORKER_ENV,
    TenantsConfig,
    calibrate,
    fleet_and_traffic,
    live_pool,
    predict,
    register_all,
    restart_workers,
)
from bench.tenants_traffic import (
    Bodies,
    Primaries,
    StatsSampler,
    histogram_quantile,
    probe_workers,
    run_classified,
    run_phase,
    scrape_all,
)

TARGET_POINTS = 3.0


# --- main ------------------------------------------------------------------------------------


def _pct(xs: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if len(xs) else math.nan


def main() -> int:
    cfg = TenantsConfig.from_env()
    if cfg.workers < 1 or not 0 < cfg.shard_size <= cfg.workers:
        raise SystemExit("need 1 <= BENCH_TENANTS_SHARD_SIZE <= BENCH_TENANTS_WORKERS")
    if not 0 <= cfg.warmup < 1:
        raise SystemExit("BENCH_TENANTS_WARMUP must be in [0, 1)")
    started = time.perf_counter()
    fleet, traffic = fleet_and_traffic(cfg)
    reqs = traffic.requests
    n_req = len(reqs)
    first_measured = math.ceil(cfg.warmup * n_req)  # the simulator's warm-up boundary
    n_classify = max(0, min(cfg.classify, n_req - first_measured))
    tail = n_req - n_classify
    extra: dict[str, Any] = {
        "config": cfg.as_dict(),
        "worker_env": WORKER_ENV,
        "cluster_env": CLUSTER_ENV,
    }
    with scratch("tenants", cfg.keep) as tmp:
        sb = ShoalBench(
            tmp / "shoal",
            workers=cfg.workers,
            shard_size=cfg.shard_size,
            worker_env=WORKER_ENV,
            env=CLUSTER_ENV,
        )
        t0 = time.perf_counter()
        sb.start()
        extra["start_s"] = time.perf_counter() - t0
        try:
            print(
                f"== register {cfg.models} tenant models ({cfg.streams} BulkRegister streams)",
                flush=True,
            )
            extra["registration"] = reg = register_all(sb, fleet, cfg.streams)
            print(f"  {reg['models_per_s']:.0f} models/s ({reg['wall_s']:.0f} s)", flush=True)

            print("== calibrate the host budget", flush=True)
            t0 = time.perf_counter()
            per_fw = calibrate(sb, fleet, CALIBRATION_SAMPLE)
            sizes = np.array([per_fw[FRAMEWORKS[i % 2]] for i in range(fleet.n_models)])
            sizes = np.maximum(1, np.round(sizes)).astype(np.int64)
            budget = math.ceil(cfg.cache_fraction * int(sizes.sum()) / cfg.workers)
            extra["resident_bytes_per_model"] = per_fw
            extra["host_budget_per_worker"] = budget
            print(f"  resident bytes/model {per_fw}; host budget {budget} B per worker", flush=True)
            restart_workers(sb, budget)

            pool = live_pool(sb)
            primaries = Primaries(pool, fleet)
            metrics = {
                s.worker_id: s.metrics_address
                for s in (sb.worker_stats(i) for i in range(cfg.workers))
            }
            addresses = list(metrics.values())
            bodies = Bodies(fleet)
            extra["probe_models"] = probe_workers(sb, bodies, primaries, metrics, fleet.n_models)
            extra["calibrate_restart_s"] = time.perf_counter() - t0

            print(f"== traffic: {n_req} Zipf({cfg.zipf:g}) requests through the router", flush=True)
            warm = run_phase(
                "warm-up", sb.router_address, bodies, reqs[:first_measured], cfg.concurrency
            )
            c0 = scrape_all(addresses)
            with StatsSampler(sb, cfg.workers) as sampler:
                bulk = run_phase(
                    "measured",
                    sb.router_address,
                    bodies,
                    reqs[first_measured:tail],
                    cfg.concurrency,
                )
                cls = run_classified(sb.router_address, bodies, reqs[tail:], primaries, metrics)
            print(
                f"  classified: {len(cls.hit_ms)} hits, {len(cls.miss_ms)} misses, "
                f"{cls.unclassified} unclassified, {cls.errors} errors at c=1 in "
                f"{cls.wall_s:.1f} s",
                flush=True,
            )
            delta = scrape_all(addresses) - c0
            stats = [sb.worker_stats(i) for i in range(cfg.workers)]
        finally:
            sb.stop()

    lookups = delta.hits + delta.misses
    measured = n_req - first_measured
    hit_rate = delta.hits / lookups if lookups else math.nan
    errors = warm.errors + bulk.errors + cls.errors
    print("== shoal simulate (Python API)", flush=True)
    t0 = time.perf_counter()
    sim_fleet = replace(fleet, sizes=sizes)
    live = predict(cfg, sim_fleet, traffic, budget, pool)
    mean = round(float(sizes.mean()))
    plain = predict(
        cfg, replace(fleet, sizes=np.full(fleet.n_models, mean, np.int64)), traffic, budget, None
    )
    # The same, with each framework's size scaled so the mean is what the workers accounted
    # per resident model while serving (Stats samples over the measured phase).
    run_mean = sampler.bytes_per_model()
    scale = run_mean / float(sizes.mean()) if math.isfinite(run_mean) else 1.0
    run_sizes = np.maximum(1, np.round(sizes * scale)).astype(np.int64)
    in_run = predict(cfg, replace(fleet, sizes=run_sizes), traffic, budget, pool)
    sim_s = time.perf_counter() - t0
    predicted = live.cache.hit_rate
    gap = 100.0 * (hit_rate - predicted)
    cold50 = 1000.0 * histogram_quantile(0.5, delta.load_buckets)
    cold99 = 1000.0 * histogram_quantile(0.99, delta.load_buckets)
    loads = delta.load_buckets.get(math.inf, 0.0)

    figs = [
        figure(
            "measured hit rate vs simulator's prediction",
            abs(gap),
            "points",
            f"<= {TARGET_POINTS:g}",
            abs(gap) <= TARGET_POINTS,
        ),
        figure("hit rate, measured (worker counters)", 100.0 * hit_rate, "%"),
        figure("hit rate, predicted (shoal simulate, live salt and sizes)", 100.0 * predicted, "%"),
        figure(
            "hit rate, predicted (shoal simulate, synthetic salt, mean size)",
            100.0 * plain.cache.hit_rate,
            "%",
        ),
        figure(
            "hit rate, predicted with the bytes/model accounted while serving",
            100.0 * in_run.cache.hit_rate,
            "%",
        ),
        figure(
            "measured hit rate vs prediction with serving-time sizes (diagnostic)",
            abs(100.0 * (hit_rate - in_run.cache.hit_rate)),
            "points",
        ),
        figure("resident bytes per model, calibration (mean)", float(sizes.mean()), "bytes"),
        figure("resident bytes per model, accounted while serving", run_mean, "bytes"),
        figure(
            "hit rate, simulator steady state (Che)", 100.0 * live.cache.steady_state.hit_rate, "%"
        ),
        figure("hit latency p50 (router, c=1)", _pct(cls.hit_ms, 50), "ms"),
        figure("hit latency p99 (router, c=1)", _pct(cls.hit_ms, 99), "ms"),
        figure("miss latency p50 (router, c=1)", _pct(cls.miss_ms, 50), "ms"),
        figure("miss latency p99 (router, c=1)", _pct(cls.miss_ms, 99), "ms"),
        figure("cold load p50 (worker histogram)", cold50, "ms"),
        figure("cold load p99 (worker histogram)", cold99, "ms"),
        figure(
            f"measured phase throughput, c={cfg.concurrency}", bulk.summary()["req_per_s"], "req/s"
        ),
        figure("registration (BulkRegister)", reg["models_per_s"], "models/s"),
        figure("tenant models", float(cfg.models), "models"),
        figure("host budget per worker", float(budget), "bytes"),
    ]
    extra.update(
        requests=n_req,
        measured_requests=measured,
        classified_requests=n_classify,
        errors=errors,
        counters={
            "hits": delta.hits,
            "misses": delta.misses,
            "disk_hits": delta.disk_hits,
            "lookups": lookups,
            "loads": loads,
            "load_buckets": {str(k): v for k, v in sorted(delta.load_buckets.items())},
        },
        phases=[warm.summary(), bulk.summary()],
        classified={
            "hits": len(cls.hit_ms),
            "misses": len(cls.miss_ms),
            "unclassified": cls.unclassified,
            "errors": cls.errors,
            "wall_s": cls.wall_s,
        },
        workers_after=[
            {
                "worker_id": s.worker_id,
                "host_bytes": s.host_bytes,
                "host_budget": s.host_budget,
                "models_resident": s.models_resident,
            }
            for s in stats
        ],
        simulate={
            "live": {
                "hit_rate": predicted,
                "max_hit_rate": live.cache.max_hit_rate,
                "steady_state": live.cache.steady_state.hit_rate,
                "worker_hit_rate_min": live.workers.hit_rate.min,
                "worker_hit_rate_max": live.workers.hit_rate.max,
                "measured": live.cache.measured,
                "inputs": live.inputs.__dict__,
            },
            "serving_sizes": {
                "hit_rate": in_run.cache.hit_rate,
                "bytes_per_model": run_mean,
                "scale": scale,
                "stats_samples": len(sampler.samples),
            },
            "synthetic": {
                "hit_rate": plain.cache.hit_rate,
                "model_bytes": mean,
                "inputs": plain.inputs.__dict__,
            },
            "wall_s": sim_s,
        },
        total_s=time.perf_counter() - started,
    )
    if errors:
        print(f"WARNING: {errors} requests failed", flush=True)
    path = write_results("tenants", figs, extra)
    with path.with_suffix(".md").open("a") as md:
        md.write(
            f"\n{cfg.models} tenant models, {cfg.workers} workers, shard size {cfg.shard_size}, "
            f"host budget {budget} B per worker ({100 * cfg.cache_fraction:g}% of all models' "
            f"resident bytes across the pool; {per_fw['xgboost']:.0f} B per XGBoost and "
            f"{per_fw['lightgbm']:.0f} B per LightGBM model, measured). {n_req} Zipf"
            f"({cfg.zipf:g}) requests, the first {first_measured} warm-up; hit rate over "
            f"{measured} ({int(lookups)} cache lookups, {int(loads)} loads); hit/miss latency "
            f"from the last {n_classify} sent one at a time ({len(cls.hit_ms)} hits, "
            f"{len(cls.miss_ms)} misses, {cls.unclassified} unclassified). Errors: {errors}.\n"
            f"\nWhile serving, the workers charged {run_mean:.0f} B per resident model against "
            f"{float(sizes.mean()):.0f} B measured at rest (x{scale:.2f}): a model's size is the "
            f"growth of the process-wide C heap across its load, which concurrent requests "
            f"pollute (or, when not positive, the static estimate); with those sizes the "
            f"simulator predicts {100 * in_run.cache.hit_rate:.2f}%.\n"
        )
    for f in figs:
        met = {True: " (met)", False: " (NOT MET)", None: ""}[f["met"]]
        print(f"  {f['name']}: {f['value']:.4g} {f['unit']}{met}")
    took = time.perf_counter() - started
    print(f"wrote {path} and {path.with_suffix('.md').name} in {took:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
