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
  threshold: before and after it the counters of its primary worker (computed with the
  router's own code, ``placement.shard.Placement`` + ``router.choose.WarmPrimaryPolicy``, from
  the live snapshot and salt) are scraped; a request is a hit when that worker's hit counter
  moved by one and its miss counter did not, a miss the other way round; anything else (it
  went to another worker, or something else touched the cache) is counted as unclassified and
  left out. The scrapes happen between requests, so they do not add to any latency;
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

import asyncio
import math
import os
import re
import shutil
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: python bench/bench_tenants.py
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import grpc
import numpy as np

from bench.bench_register import tiny_models, variant
from bench.common import figure, write_results
from bench.config import scratch, wait_for
from bench.shoal_harness import ShoalBench
from bench.wire import INFER_PATH, infer_request
from capacity.inputs import Fleet, SizeModel, Traffic, synthetic_fleet, zipf_traffic
from capacity.model import Report, SimConfig
from capacity.run import simulate
from router.choose import WarmPrimaryPolicy
from shoal.artifacts import TREE_INPUT
from shoal.cluster import etcd_get
from shoal.records import CLUSTER, ClusterConfig, Member
from shoal.shard import Placement, Pool

FRAMEWORKS = ("xgboost", "lightgbm")  # tenant i gets FRAMEWORKS[i % 2]
FEATURES = 8  # the tiny boosters' input width (bench_register.tiny_models)
CALIBRATION_SAMPLE = 100  # models of each framework loaded to measure resident bytes
TARGET_POINTS = 3.0
WORKER_ENV = {"SHOAL_DEVICE": "cpu", "SHOAL_HOST_BUDGET": "4GiB"}  # budget: until calibrated
CLUSTER_ENV = {"SHOAL_HOT_RATE": "0", "SHOAL_SPILL_AT": "1000000"}


@dataclass(frozen=True)
class TenantsConfig:
    smoke: bool
    models: int
    requests: int
    warmup: float
    classify: int
    concurrency: int
    workers: int
    shard_size: int
    cache_fraction: float
    zipf: float
    seed: int
    streams: int
    keep: bool

    @classmethod
    def from_env(cls) -> TenantsConfig:
        smoke = os.environ.get("BENCH_SMOKE", "0") not in ("", "0", "false", "no")

        def env(name: str, default: str, smoke_default: str | None = None) -> str:
            fallback = smoke_default if smoke and smoke_default is not None else default
            return os.environ.get(f"BENCH_TENANTS_{name}", fallback)

        return cls(
            smoke=smoke,
            models=int(env("MODELS", "100000", "2000")),
            requests=int(env("REQUESTS", "60000", "6000")),
            warmup=float(env("WARMUP", "0.5")),
            classify=int(env("CLASSIFY", "2000", "300")),
            concurrency=int(env("CONCURRENCY", "4")),
            workers=int(env("WORKERS", "2")),
            shard_size=int(env("SHARD_SIZE", "2")),
            cache_fraction=float(env("CACHE_FRACTION", "0.10")),
            zipf=float(env("ZIPF", "1.0")),
            seed=int(env("SEED", "0")),
            streams=int(env("STREAMS", "4")),
            keep=os.environ.get("BENCH_KEEP", "0") not in ("", "0", "false", "no"),
        )

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


# --- metrics --------------------------------------------------------------------------------

_HITS = re.compile(r'^shoal_worker_cache_hits_total\{tier="(?:host|gpu)"\} (\S+)$', re.M)
_MISSES = re.compile(r'^shoal_worker_cache_misses_total\{tier="memory"\} (\S+)$', re.M)
_DISK_HITS = re.compile(r'^shoal_worker_cache_hits_total\{tier="disk"\} (\S+)$', re.M)
_LOAD_BUCKET = re.compile(
    r'^shoal_worker_load_seconds_bucket\{framework="[^"]*",le="([^"]+)"\} (\S+)$', re.M
)


@dataclass(frozen=True)
class Counters:
    """One scrape of one worker (or a sum): cache counters and the load-time histogram."""

    hits: float
    misses: float
    disk_hits: float
    load_buckets: dict[float, float]  # upper bound (s) -> cumulative count, all frameworks

    def __add__(self, o: Counters) -> Counters:
        b = {
            le: self.load_buckets.get(le, 0.0) + o.load_buckets.get(le, 0.0)
            for le in {*self.load_buckets, *o.load_buckets}
        }
        return Counters(self.hits + o.hits, self.misses + o.misses, self.disk_hits + o.disk_hits, b)

    def __sub__(self, o: Counters) -> Counters:
        b = {le: v - o.load_buckets.get(le, 0.0) for le, v in self.load_buckets.items()}
        return Counters(self.hits - o.hits, self.misses - o.misses, self.disk_hits - o.disk_hits, b)


def _sum(pattern: re.Pattern[str], text: str) -> float:
    return sum(float(v) for v in pattern.findall(text))


def scrape_text(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as r:
        text: str = r.read().decode()
    return text


def scrape(address: str) -> Counters:
    text = scrape_text(address)
    buckets: dict[float, float] = {}
    for le, v in _LOAD_BUCKET.findall(text):
        bound = math.inf if le == "+Inf" else float(le)
        buckets[bound] = buckets.get(bound, 0.0) + float(v)
    return Counters(_sum(_HITS, text), _sum(_MISSES, text), _sum(_DISK_HITS, text), buckets)


def scrape_all(addresses: Sequence[str]) -> Counters:
    total = Counters(0.0, 0.0, 0.0, {})
    for a in addresses:
        total = total + scrape(a)
    return total


def histogram_quantile(q: float, buckets: dict[float, float]) -> float:
    """Prometheus' ``histogram_quantile``: linear within the bucket holding the quantile
    (the lowest bucket starts at 0; a quantile in the +Inf bucket returns the last bound)."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return math.nan
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for b in bounds:
        c = buckets[b]
        if c >= rank:
            if math.isinf(b):
                return lower
            return lower + (b - lower) * ((rank - below) / (c - below) if c > below else 0.0)
        lower, below = b, c
    return lower


# --- fleet, registration, calibration -------------------------------------------------------


def fleet_and_traffic(cfg: TenantsConfig) -> tuple[Fleet, Traffic]:
    """The synthetic fleet's tenant names and the Zipf stream, exactly as ``shoal simulate
    --models N --seed S`` draws them (fixed sizes consume no random numbers)."""
    rng = np.random.default_rng(cfg.seed)
    fleet = synthetic_fleet(cfg.models, SizeModel(1), rng)
    traffic = zipf_traffic(fleet, cfg.zipf, cfg.requests, 1000.0, rng)
    return fleet, traffic


def register_all(sb: ShoalBench, fleet: Fleet, streams: int) -> dict[str, Any]:
    base = tiny_models()
    n = fleet.n_models
    t0 = time.perf_counter()
    items: list[tuple[str, str, bytes | str]] = []
    for i in range(n):
        fw = FRAMEWORKS[i % 2]
        items.append((fleet.tenants[i], fleet.model_names[i], variant(base[fw], fw, i, n)))
    gen_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    parts = [items[j::streams] for j in range(streams)]
    with ThreadPoolExecutor(streams) as pool:
        versions = [v for part in pool.map(sb.bulk_register, parts) for v in part]
    wall = time.perf_counter() - t0
    if any(v != 1 for v in versions):
        raise RuntimeError("expected version 1 for every new tenant model")
    return {
        "models": n,
        "streams": streams,
        "generate_s": gen_s,
        "wall_s": wall,
        "models_per_s": n / wall,
        "artifact_bytes": {fw: len(base[fw]) for fw in FRAMEWORKS},
    }


def calibrate(sb: ShoalBench, fleet: Fleet, sample: int) -> dict[str, float]:
    """Resident bytes per model of each framework, as worker 0's host tier accounts them."""
    out: dict[str, float] = {}
    for j, fw in enumerate(FRAMEWORKS):
        idx = list(range(j, fleet.n_models, 2))[:sample]
        before = sb.worker_stats(0)
        for i in idx:
            sb.load_model(fleet.tenants[i], fleet.model_names[i], 0)
        after = sb.worker_stats(0)
        if after.models_resident - before.models_resident != len(idx):
            raise RuntimeError(f"calibration: {fw} models did not all stay resident")
        out[fw] = (after.host_bytes - before.host_bytes) / len(idx)
    return out


def restart_workers(sb: ShoalBench, budget: int) -> None:
    """Stop every worker, empty its data folder, start it again with ``budget``."""
    c = sb.c
    ids = [w.extra["worker_id"] for w in c.workers]
    for w in c.workers:
        w.proc.stop(10)
        shutil.rmtree(c.data_dir / "workers" / w.extra["worker_id"], ignore_errors=True)
    c.worker_env["SHOAL_HOST_BUDGET"] = str(budget)
    for wid in ids:
        c.add_worker(wait_in_snapshot=False, worker_id=wid)
    c.wait_snapshot(set(ids))
    for i in range(len(ids)):
        got = sb.worker_stats(i).host_budget
        if got != budget:
            raise RuntimeError(f"worker {i} runs with host budget {got}, not {budget}")


def live_pool(sb: ShoalBench) -> Pool:
    """The pool as the router sees it: the published snapshot and the cluster's salt."""
    snap = sb.c.snapshot()
    raw = etcd_get(sb.c.etcd_url, CLUSTER)
    if snap is None or raw is None:
        raise RuntimeError("no placement snapshot or cluster salt in etcd")
    return Pool.from_snapshot(snap, bytes.fromhex(ClusterConfig.decode(raw).salt))


class Primaries:
    """The worker the router sends each model to: its own code on the live snapshot."""

    def __init__(self, pool: Pool, fleet: Fleet) -> None:
        self.placement = Placement(pool)
        self.policy = WarmPrimaryPolicy()
        self.fleet = fleet

    def __call__(self, m: int) -> Member:
        f = self.fleet
        tenant = f.tenants[int(f.model_tenant[m])]
        ranked, k = self.placement.ranked(tenant)
        key = f"{tenant}/{f.model_names[m]}:{int(f.versions[m])}"
        return self.policy.choose(ranked, k, key, {}, ())[0]


class StatsSampler:
    """Samples every worker's ``WorkerAdmin/Stats`` (host bytes, models resident) in a thread
    until stopped: the bytes per resident model the workers account while serving."""

    def __init__(self, sb: ShoalBench, workers: int, interval_s: float = 0.5) -> None:
        self.sb = sb
        self.workers = workers
        self.interval_s = interval_s
        self.samples: list[tuple[int, int]] = []  # (host bytes, models resident), summed
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            stats = [self.sb.worker_stats(i) for i in range(self.workers)]
            self.samples.append(
                (sum(s.host_bytes for s in stats), sum(s.models_resident for s in stats))
            )

    def __enter__(self) -> StatsSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def bytes_per_model(self) -> float:
        b = sum(x for x, _ in self.samples)
        m = sum(y for _, y in self.samples)
        return b / m if m else math.nan


# --- traffic ---------------------------------------------------------------------------------


class Bodies:
    """Pre-encoded 1-row ModelInferRequest per model, built on first use."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.row = np.full((1, FEATURES), 0.5, np.float32)
        self._cache: dict[int, bytes] = {}

    def __call__(self, m: int) -> bytes:
        body = self._cache.get(m)
        if body is None:
            f = self.fleet
            name = f"{f.tenants[int(f.model_tenant[m])]}/{f.model_names[m]}"
            body = self._cache[m] = infer_request(name, self.row, TREE_INPUT)
        return body


@dataclass
class Phase:
    name: str
    requests: int
    concurrency: int
    wall_s: float
    errors: int
    latencies_ms: np.ndarray

    def summary(self) -> dict[str, Any]:
        lat = self.latencies_ms
        pct = np.percentile(lat, [50, 99]).tolist() if lat.size else [math.nan, math.nan]
        return {
            "name": self.name,
            "requests": self.requests,
            "concurrency": self.concurrency,
            "wall_s": self.wall_s,
            "req_per_s": self.requests / max(self.wall_s, 1e-9),
            "errors": self.errors,
            "p50_ms": pct[0],
            "p99_ms": pct[1],
        }


async def _drive(address: str, bodies: list[bytes], concurrency: int) -> tuple[list[float], int]:
    lat: list[float] = []
    errors = 0
    it = iter(bodies)
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_unary(INFER_PATH)

        async def caller() -> None:
            nonlocal errors
            for body in it:  # the shared iterator keeps the stream order across callers
                s = time.perf_counter()
                try:
                    await call(body, timeout=60.0)
                except grpc.aio.AioRpcError:
                    errors += 1
                    continue
                lat.append((time.perf_counter() - s) * 1000.0)

        await asyncio.gather(*(caller() for _ in range(concurrency)))
    return lat, errors


def run_phase(
    name: str, address: str, bodies: Bodies, requests: np.ndarray, concurrency: int
) -> Phase:
    encoded = [bodies(int(m)) for m in requests]
    t0 = time.perf_counter()
    lat, errors = asyncio.run(_drive(address, encoded, concurrency))
    wall = time.perf_counter() - t0
    phase = Phase(name, len(encoded), concurrency, wall, errors, np.asarray(lat))
    s = phase.summary()
    print(
        f"  {name}: {s['requests']} requests at c={concurrency} in {wall:.1f} s "
        f"({s['req_per_s']:.0f} req/s), errors {errors}",
        flush=True,
    )
    return phase


@dataclass
class Classified:
    hit_ms: list[float]
    miss_ms: list[float]
    unclassified: int
    errors: int
    wall_s: float


def run_classified(
    address: str,
    bodies: Bodies,
    requests: np.ndarray,
    primaries: Primaries,
    metrics: dict[str, str],
) -> Classified:
    """One request at a time; the primary's counters before and after classify each one."""
    out = Classified([], [], 0, 0, 0.0)
    last: dict[str, tuple[float, float]] = {}
    t0 = time.perf_counter()
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(INFER_PATH)
        for m in requests.tolist():
            wid = primaries(m).worker_id
            addr = metrics[wid]
            if wid not in last:
                text = scrape_text(addr)
                last[wid] = (_sum(_HITS, text), _sum(_MISSES, text))
            body = bodies(m)
            s = time.perf_counter()
            try:
                call(body, timeout=60.0)
                ms = (time.perf_counter() - s) * 1000.0
            except grpc.RpcError:
                out.errors += 1
                ms = math.nan
            text = scrape_text(addr)
            now = (_sum(_HITS, text), _sum(_MISSES, text))
            dh, dm = now[0] - last[wid][0], now[1] - last[wid][1]
            last[wid] = now
            if math.isnan(ms):
                continue
            if (dh, dm) == (1.0, 0.0):
                out.hit_ms.append(ms)
            elif (dh, dm) == (0.0, 1.0):
                out.miss_ms.append(ms)
            else:
                out.unclassified += 1
    out.wall_s = time.perf_counter() - t0
    return out


def probe_workers(
    sb: ShoalBench, bodies: Bodies, primaries: Primaries, metrics: dict[str, str], n: int
) -> list[int]:
    """One request per worker, to the least popular tenants it is primary for, retried until
    the router reaches that worker (its request counters move): the restarted workers are
    then in the router's view and not ejected."""
    used: list[int] = []
    for wid, addr in metrics.items():
        m = next(i for i in range(n - 1, -1, -1) if primaries(i).worker_id == wid)

        def reached(m: int = m, addr: str = addr, wid: str = wid) -> None:
            before = scrape(addr)
            with grpc.insecure_channel(sb.router_address) as channel:
                channel.unary_unary(INFER_PATH)(bodies(m), timeout=30.0)
            after = scrape(addr)
            if after.hits + after.misses <= before.hits + before.misses:
                raise RuntimeError(f"the router did not send tenant model {m} to {wid}")

        wait_for(f"the router reaching {wid}", reached, timeout=60.0, interval=0.5)
        used.append(m)
    return used


# --- the simulator ---------------------------------------------------------------------------


def predict(
    cfg: TenantsConfig, fleet: Fleet, traffic: Traffic, budget: int, pool: Pool | None
) -> Report:
    """``shoal simulate`` on this setup: the live members and salt when ``pool`` is given,
    synthetic ones (the CLI's, from the seed) otherwise."""
    sim_cfg = SimConfig(
        workers=cfg.workers,
        shard_size=cfg.shard_size,
        budget_bytes=budget,
        seed=cfg.seed,
        warmup=cfg.warmup,
        salt=pool.salt if pool is not None else None,
        members=pool.members if pool is not None else None,
        pairs=10_000,  # blast-radius sampling: not used here
    )
    return simulate(fleet, traffic, sim_cfg)


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
