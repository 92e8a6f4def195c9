"""Fleet simulation for capacity planning (``shoal simulate``), on the production shard code.

``simulate(fleet, traffic, config)`` places every tenant of ``fleet`` with
``shoal.shard.shard_matrix`` (the vectorised twin of ``Placement``, tested equal to it) on a
pool of ``config.workers`` workers, routes each model to its primary member
(``Fleet.primary_indices``: ``shoal.shard.primary_indices``, the router's choice, on keys built
natively), and reports:

1. per worker (``WorkerFigures``): models assigned (every model of every tenant whose shard holds
   the worker), bytes to hold them all, request load (requests/s routed to it), models and
   bytes it is primary for, LRU hit rate and misses/s, each as min/mean/p99/max and max/mean;
2. blast radius (``capacity.stats.BlastRadius``) beside the hypergeometric closed forms;
3. movement (``Movement``) when one worker joins and when the most loaded worker leaves: tenants,
   bytes and traffic that move, beside ``k/(N+1)`` and ``k/N``;
4. cache (``CacheFigures``): exact LRU hit rates (``capacity.cache``) of each worker's request
   stream under the byte budget, the hit-rate-vs-budget curve, and the budget needed for target
   hit rates; beside them the steady state under independent requests (Che's approximation),
   which a finite trace cannot reach when most models are requested only a few times in it.

Routing is the router's steady state with every worker up and no spill: the router (its
member policy, ``shoal.shard.member_order``) sends a model version to its primary and spills to the
other members only while the primary has ``spill_at`` requests in flight from that router, and
skips members that are down. So each model lives on exactly one worker, its primary, which makes
each worker's request stream (and so its LRU cache) independent of the others. Spill traffic
would warm extra copies of the hottest models and move some of their load; it is not modelled.

Failure modes: ``InputError`` for an unusable configuration (k > N, a tenant pinned to no worker
of the pool). Memory is about 100 bytes per request plus ~200 bytes per model; 1M models and
3M requests fit in ~0.5 GiB, 10M models and 30M requests in ~4 GiB. Time, on 2 cores: the shard
matrix (N scores per tenant, ~0.75 s per 1M tenants with 1,000 workers; native, every core)
dominates, then the cache replays (W-TinyLFU at every curve budget, or LRU's stack distances,
native: ~0.1 us per request and budget) and the steady state; 10M x 1,000 with 30M requests
runs in ~40 s end to end (bench/bench_simulate.py).
"""

from __future__ import annotations

import time

import numpy as np

from capacity.cache import cache_figures
from capacity.inputs import Fleet, InputError, Traffic, synthetic_members
from capacity.model import Inputs, Progress, Report, SimConfig, WorkerFigures, WorkerRow
from capacity.movement import join, leave
from capacity.replay import tinylfu_figures
from capacity.shards import hash_tenants, hot_overrides, tenant_shards
from capacity.stats import Spread, blast_radius
from shoal.shard import Pool


class _Stages:
    """Progress over weighted stages, plus wall time per stage."""

    def __init__(self, weights: dict[str, float], progress: Progress | None) -> None:
        total = sum(weights.values())
        self._weights = {k: v / total for k, v in weights.items()}
        self._progress = progress
        self._done = 0.0
        self._stage = ""
        self._t0 = time.perf_counter()
        self.timings: dict[str, float] = {}

    def start(self, stage: str) -> None:
        self._close()
        self._stage = stage
        self._t0 = time.perf_counter()
        self.update(0.0)

    def update(self, fraction: float) -> None:
        if self._progress is not None:
            w = self._weights.get(self._stage, 0.0)
            self._progress(self._stage, min(1.0, self._done + w * fraction))

    def _close(self) -> None:
        if self._stage:
            self.timings[self._stage] = round(time.perf_counter() - self._t0, 3)
            self._done += self._weights.get(self._stage, 0.0)

    def finish(self) -> dict[str, float]:
        self._close()
        self._stage = ""
        if self._progress is not None:
            self._progress("done", 1.0)
        return self.timings


def simulate(
    fleet: Fleet, traffic: Traffic, config: SimConfig, progress: Progress | None = None
) -> Report:
    """Run the whole simulation (see the module docstring). Deterministic for a seed."""
    stages = _Stages(
        {"hash": 3, "shards": 3.5, "route": 1.5, "blast": 0.5, "join": 0.7, "leave": 0.5,
         "cache": 4},
        progress,
    )  # fmt: skip
    rng = np.random.default_rng(config.seed)
    members = config.members or synthetic_members(config.workers, config.zones)
    n = len(members)
    if not 0 < config.shard_size <= n:
        raise InputError(f"shard size {config.shard_size} must be between 1 and {n} workers")
    if not 0 <= config.warmup < 1:
        raise InputError("warmup must be in [0, 1)")
    salt = config.pool_salt()
    pool = Pool(members, salt, config.shard_size)

    stages.start("hash")
    hashes = hash_tenants(fleet.tenants, salt, stages.update)
    tenant_pop = np.bincount(
        fleet.model_tenant, weights=traffic.popularity, minlength=len(fleet.tenants)
    )
    overrides = hot_overrides(fleet, tenant_pop, config.hot)

    stages.start("shards")
    shards = tenant_shards(pool, fleet.tenants, hashes, overrides, stages.update)

    stages.start("route")
    pidx = fleet.primary_indices(shards.k[fleet.model_tenant])
    primary = shards.rows[fleet.model_tenant, pidx]
    t_models = fleet.tenant_models()
    t_bytes = fleet.tenant_bytes()
    # Column by column (every member slot of every shard): whole-number sums, so exact in
    # any order, without [T, k] index arrays.
    w_models = np.zeros(n)
    w_bytes = np.zeros(n)
    for col in shards.rows.T:
        held = col >= 0
        whole = bool(held.all())
        holder = col if whole else col[held]
        w_models += np.bincount(holder, weights=t_models if whole else t_models[held], minlength=n)
        w_bytes += np.bincount(holder, weights=t_bytes if whole else t_bytes[held], minlength=n)
    w_pmodels = np.bincount(primary, minlength=n)
    w_pbytes = np.bincount(primary, weights=fleet.sizes, minlength=n)
    w_load = np.bincount(primary, weights=traffic.popularity, minlength=n) * traffic.rps

    stages.start("blast")
    standard = (shards.k == min(config.shard_size, n)) & ~shards.pinned
    zoned = pool.n_zones > 1
    blast = blast_radius(
        shards.rows[standard][:, : config.shard_size], n, rng, config.pairs, config.victims, zoned
    )

    stages.start("join")
    join_ = join(pool, fleet, traffic, shards, hashes, overrides, primary, pidx, stages.update)
    stages.start("leave")
    leaver = int(np.argmax(w_bytes))
    leave_ = leave(pool, fleet, traffic, shards, hashes, overrides, primary, pidx, leaver)

    stages.start("cache")
    if config.policy not in ("tinylfu", "lru"):
        raise InputError(f"unknown cache policy {config.policy!r}: expected tinylfu or lru")
    figures_of = tinylfu_figures if config.policy == "tinylfu" else cache_figures
    cache, w_hit, w_measured = figures_of(traffic, primary, fleet.sizes, n, config, stages.update)
    with np.errstate(invalid="ignore", divide="ignore"):
        w_hitrate = np.where(w_measured > 0, w_hit / np.maximum(w_measured, 1), np.nan)
    w_miss = w_load * np.nan_to_num(1.0 - w_hitrate, nan=0.0)
    timings = stages.finish()

    per_worker = [
        WorkerRow(
            worker_id=m.worker_id,
            zone=m.zone,
            models=int(w_models[i]),
            bytes=int(w_bytes[i]),
            primary_models=int(w_pmodels[i]),
            primary_bytes=int(w_pbytes[i]),
            load_rps=float(w_load[i]),
            hit_rate=float(w_hitrate[i]),
            misses_per_s=float(w_miss[i]),
        )
        for i, m in enumerate(members)
    ]
    inputs = Inputs(
        fleet=fleet.source,
        models=fleet.n_models,
        tenants=len(fleet.tenants),
        model_bytes_total=int(fleet.sizes.sum()),
        workers=n,
        zones=pool.n_zones,
        shard_size=config.shard_size,
        hot_tenants=int((shards.k != min(config.shard_size, n)).sum()),
        pinned_tenants=int(shards.pinned.sum()),
        traffic=traffic.source,
        requests=len(traffic.requests),
        rps=traffic.rps,
        budget_bytes=config.budget_bytes,
        seed=config.seed,
        policy=config.policy,
        routing="primary = shard[blake2b('tenant/name:version') mod k], as the router's "
        "member policy without spill",
    )
    return Report(
        inputs=inputs,
        workers=WorkerFigures(
            models=Spread.of(w_models),
            bytes=Spread.of(w_bytes),
            primary_models=Spread.of(w_pmodels),
            primary_bytes=Spread.of(w_pbytes),
            load_rps=Spread.of(w_load),
            hit_rate=Spread.of(w_hitrate),
            misses_per_s=Spread.of(w_miss),
            over_budget=int((w_bytes > config.budget_bytes).sum()),
        ),
        blast_radius=blast,
        movement=[join_, leave_],
        cache=cache,
        per_worker=per_worker,
        timings_s=timings,
    )
