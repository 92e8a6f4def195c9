"""``bench_tenants``'s setup: its configuration (``BENCH_TENANTS_*``), the fleet and the Zipf
stream as ``shoal simulate`` draws them, bulk registration, the calibration of the host budget,
the workers' restart with it, and the simulator's prediction for the live pool."""

from __future__ import annotations

import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.bench_register import tiny_models, variant
from bench.shoal_harness import ShoalBench
from capacity.inputs import Fleet, SizeModel, Traffic, synthetic_fleet, zipf_traffic
from capacity.model import Report, SimConfig
from capacity.run import simulate
from shoal.cluster import etcd_get
from shoal.records import CLUSTER, ClusterConfig
from shoal.shard import Pool

FRAMEWORKS = ("xgboost", "lightgbm")  # tenant i gets FRAMEWORKS[i % 2]
FEATURES = 8  # the tiny boosters' input width (bench_register.tiny_models)
CALIBRATION_SAMPLE = 100  # models of each framework loaded to measure resident bytes
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
