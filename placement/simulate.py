"""Fleet simulation for capacity planning (``shoal simulate``), on the production shard code.

``simulate(fleet, traffic, config)`` places every tenant of ``fleet`` with
``shoal.shard.shard_matrix`` (the vectorised twin of ``Placement``, tested equal to it) on a
pool of ``config.workers`` workers, routes each model to its primary member
(``shoal.shard.primary_indices``, the router's choice), and reports:

1. per worker (``WorkerFigures``): models assigned (every model of every tenant whose shard holds
   the worker), bytes to hold them all, request load (requests/s routed to it), models and
   bytes it is primary for, LRU hit rate and misses/s, each as min/mean/p99/max and max/mean;
2. blast radius (``simulate_stats.BlastRadius``) beside the hypergeometric closed forms;
3. movement (``Movement``) when one worker joins and when the most loaded worker leaves: tenants,
   bytes and traffic that move, beside ``k/(N+1)`` and ``k/N``;
4. cache (``CacheFigures``): exact LRU hit rates (``simulate_cache``) of each worker's request
   stream under the byte budget, the hit-rate-vs-budget curve, and the budget needed for target
   hit rates; beside them the steady state under independent requests (Che's approximation),
   which a finite trace cannot reach when most models are requested only a few times in it.

Routing is the router's steady state with every worker up and no spill: the router
(``router.choose.WarmPrimaryPolicy``) sends a model version to its primary and spills to the
other members only while the primary has ``spill_at`` requests in flight from that router, and
skips members that are down. So each model lives on exactly one worker, its primary, which makes
each worker's request stream (and so its LRU cache) independent of the others. Spill traffic
would warm extra copies of the hottest models and move some of their load; it is not modelled.

Failure modes: ``InputError`` for an unusable configuration (k > N, a tenant pinned to no worker
of the pool). Memory is about 100 bytes per request plus ~200 bytes per model; 1M models and
3M requests fit in ~1 GiB. Time is dominated by hashing tenant ids (~3 s per 1M), two shard
matrices (now and after a join, ~3.5 s per 1M tenants each with 64 workers, more with zones) and
the stack distances (~1.5 us per request).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from placement.simulate_cache import COLD, CheTable, stack_distances
from placement.simulate_inputs import Fleet, InputError, Traffic, synthetic_members
from placement.simulate_stats import BlastRadius, Spread, Versus, blast_radius, new_members
from shoal.records import Member, TenantConfig
from shoal.shard import Placement, Pool, primary_indices, shard_matrix, tenant_hashes

#: ``progress(stage, fraction_done)``: fraction_done in [0, 1] over the whole simulation.
Progress = Callable[[str, float], None]

_GiB = 1 << 30


@dataclass(frozen=True, slots=True)
class HotRule:
    """The ``top`` most requested tenants get shard size ``shard_size`` (a larger k)."""

    top: int
    shard_size: int


@dataclass(frozen=True)
class SimConfig:
    """Knobs of one simulation; the fleet and traffic come separately (``simulate_inputs``)."""

    workers: int = 64
    shard_size: int = 4
    zones: int = 1
    hot: tuple[HotRule, ...] = ()
    budget_bytes: int = 32 * _GiB
    seed: int = 0
    #: Leading share of the request stream that only warms the caches (not counted).
    warmup: float = 0.25
    targets: tuple[float, ...] = (0.9, 0.95, 0.99)
    #: The placement salt; None: derived from the seed (shards are then those of a cluster
    #: with that salt; any salt gives the same statistics).
    salt: bytes | None = None
    #: Explicit members (e.g. the live snapshot's); None: ``workers`` synthetic members.
    members: tuple[Member, ...] | None = None
    pairs: int = 1_000_000
    victims: int = 32
    curve_points: int = 41

    def pool_salt(self) -> bytes:
        if self.salt is not None:
            return self.salt
        return hashlib.sha256(f"shoal-simulate-{self.seed}".encode()).digest()


@dataclass(frozen=True)
class Shards:
    """Every tenant's shard: ``rows[t, :k[t]]`` are member indices in selection order
    (``-1`` pads rows shorter than the longest shard)."""

    rows: np.ndarray
    k: np.ndarray
    pinned: np.ndarray  # bool [T]: explicit member list (VIP override)


def tenant_shards(
    pool: Pool,
    tenants: list[str],
    hashes: np.ndarray,
    overrides: Mapping[str, TenantConfig],
    progress: Callable[[float], None] | None = None,
    chunk: int = 131072,
) -> Shards:
    """Shards as ``Placement(pool, overrides).shard(tenant)`` gives them, for all tenants.

    Tenants with an explicit member list go through ``Placement`` itself (they are few); the
    others through ``shard_matrix`` grouped by shard size. Raises ``InputError`` when a pinned
    tenant names no member of the pool.
    """
    n_t = len(tenants)
    n = len(pool)
    k = np.full(n_t, min(pool.shard_size, n), dtype=np.int64)
    pinned = np.zeros(n_t, dtype=bool)
    placement = Placement(pool, overrides, cache_size=1) if overrides else None
    explicit: dict[int, list[int]] = {}
    if overrides:
        where = {name: i for i, name in enumerate(tenants)}
        index = {m.worker_id: i for i, m in enumerate(pool.members)}
        for name, cfg in overrides.items():
            i = where.get(name)
            if i is None:
                continue
            if cfg.members:
                assert placement is not None
                k[i] = placement.shard_size(name)
                if k[i] == 0:
                    raise InputError(f"tenant {name!r} is pinned to no worker of the pool")
                members, _ = placement.ranked(name)
                explicit[i] = [index[m.worker_id] for m in members[: k[i]]]
                pinned[i] = True
            elif cfg.shard_size > 0:
                k[i] = min(cfg.shard_size, n)
    rows = np.full((n_t, int(k.max()) if n_t else 0), -1, dtype=np.int64)
    for i, members_idx in explicit.items():
        rows[i, : len(members_idx)] = members_idx
    todo = [(kv, np.flatnonzero((k == kv) & ~pinned)) for kv in np.unique(k[~pinned]).tolist()]
    total = max(1, sum(len(sel) for _, sel in todo))
    done = 0
    for kv, sel in todo:
        for lo in range(0, len(sel), chunk):
            part = sel[lo : lo + chunk]
            rows[part, :kv] = shard_matrix(pool, hashes[part], kv)
            done += len(part)
            if progress is not None:
                progress(done / total)
    return Shards(rows, k, pinned)


def hot_overrides(
    fleet: Fleet, tenant_popularity: np.ndarray, rules: tuple[HotRule, ...]
) -> dict[str, TenantConfig]:
    """The fleet's overrides plus one ``TenantConfig(shard_size=K)`` per hot tenant.

    A tenant in several rules gets the largest K; a rule overrides a registry shard size but
    never an explicit member list.
    """
    out = dict(fleet.overrides)
    if not rules:
        return out
    rank = np.argsort(-tenant_popularity, kind="stable")
    size: dict[int, int] = {}
    for rule in rules:
        if rule.top < 0 or rule.shard_size <= 0:
            raise InputError("hot rules need top >= 0 and a positive shard size")
        for t in rank[: rule.top].tolist():
            size[t] = max(size.get(t, 0), rule.shard_size)
    for t, kv in size.items():
        name = fleet.tenants[t]
        cur = out.get(name)
        if cur is not None and cur.members:
            continue
        out[name] = (
            TenantConfig(name, shard_size=kv) if cur is None else replace(cur, shard_size=kv)
        )
    return out


# --- report ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerRow:
    worker_id: str
    zone: str
    models: int
    bytes: int
    primary_models: int
    primary_bytes: int
    load_rps: float
    hit_rate: float  # NaN when no measured request reached the worker
    misses_per_s: float


@dataclass(frozen=True)
class WorkerFigures:
    models: Spread
    bytes: Spread
    primary_models: Spread
    primary_bytes: Spread
    load_rps: Spread
    hit_rate: Spread
    misses_per_s: Spread
    over_budget: int  # workers whose assigned bytes exceed the cache budget


@dataclass(frozen=True)
class Movement:
    """What changes when ``worker_id`` joins or leaves (every other worker stays).

    ``tenants``: share of tenants whose shard changes, beside ``k/(N+1)`` (join) or the expected
    ``k/N`` (leave; the simulated leaver is the worker holding the most bytes, so its share is
    its own tenants' share). ``bytes``: bytes that must be loaded on new members, and their
    share of all placed bytes (every model counted once per shard member). ``traffic``: share of
    requests whose primary worker changes (their cache entries go cold).
    """

    event: str
    worker_id: str
    tenants: Versus
    bytes_moved: int
    bytes_share: Versus
    traffic: float


@dataclass(frozen=True)
class BudgetFor:
    """Per-worker budget reaching ``target``: ``overall`` (pool-wide hit rate) and
    ``every_worker`` (each worker's own hit rate); None when unreachable within the trace
    (first requests always miss)."""

    target: float
    overall: int | None
    every_worker: int | None


@dataclass(frozen=True)
class CurvePoint:
    budget_bytes: int
    hit_rate: float


@dataclass(frozen=True)
class SteadyState:
    """Long-run LRU figures under independent requests with the simulated popularity (Che's
    approximation, ``simulate_cache.CheTable``): what a long-running fleet converges to, free
    of the first-request misses that cap a finite trace. Same curve budgets as the replay."""

    hit_rate: float
    worker_hit_rate: Spread
    curve: list[CurvePoint]
    budget_for: list[BudgetFor]
    method: str = "Che's approximation, independent requests"


@dataclass(frozen=True)
class CacheFigures:
    """LRU results: ``hit_rate``, ``curve`` and ``budget_for`` are the exact replay of the
    request stream (``method``, see ``simulate_cache``); ``steady_state`` the long-run view."""

    budget_bytes: int
    requests: int
    measured: int
    warmup: float
    hit_rate: float
    max_hit_rate: float  # with an unbounded budget: only first requests miss
    curve: list[CurvePoint]
    budget_for: list[BudgetFor]
    steady_state: SteadyState
    method: str = "exact LRU replay per worker via byte stack distances"


@dataclass(frozen=True)
class Inputs:
    """What was simulated, echoed in the report."""

    fleet: str
    models: int
    tenants: int
    model_bytes_total: int
    workers: int
    zones: int
    shard_size: int
    hot_tenants: int  # tenants with a shard size other than the pool's (hot rules, overrides)
    pinned_tenants: int  # tenants with an explicit member list
    traffic: str
    requests: int
    rps: float
    budget_bytes: int
    seed: int
    routing: str


@dataclass(frozen=True)
class Report:
    inputs: Inputs
    workers: WorkerFigures
    blast_radius: BlastRadius | None
    movement: list[Movement]
    cache: CacheFigures
    per_worker: list[WorkerRow]
    timings_s: dict[str, float] = field(default_factory=dict)


# --- the simulation ------------------------------------------------------------------------


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
    hashes = _hash_tenants(fleet.tenants, salt, stages.update)
    tenant_pop = np.bincount(
        fleet.model_tenant, weights=traffic.popularity, minlength=len(fleet.tenants)
    )
    overrides = hot_overrides(fleet, tenant_pop, config.hot)

    stages.start("shards")
    shards = tenant_shards(pool, fleet.tenants, hashes, overrides, stages.update)

    stages.start("route")
    keys = fleet.model_keys()
    pidx = primary_indices(keys, shards.k[fleet.model_tenant])
    del keys
    primary = shards.rows[fleet.model_tenant, pidx]
    t_models = fleet.tenant_models()
    t_bytes = fleet.tenant_bytes()
    valid = shards.rows >= 0
    holder_t = np.broadcast_to(np.arange(len(fleet.tenants))[:, None], shards.rows.shape)[valid]
    holders = shards.rows[valid]
    w_models = np.bincount(holders, weights=t_models[holder_t], minlength=n)
    w_bytes = np.bincount(holders, weights=t_bytes[holder_t], minlength=n)
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
    join = _join(pool, fleet, traffic, shards, hashes, overrides, primary, pidx, stages.update)
    stages.start("leave")
    leaver = int(np.argmax(w_bytes))
    leave = _leave(pool, fleet, traffic, shards, hashes, overrides, primary, pidx, leaver)

    stages.start("cache")
    cache, w_hit, w_measured = _cache(traffic, primary, fleet.sizes, n, config, stages.update)
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
        routing="primary = shard[blake2b('tenant/name:version') mod k], as the router's "
        "WarmPrimaryPolicy without spill",
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
        movement=[join, leave],
        cache=cache,
        per_worker=per_worker,
        timings_s=timings,
    )


def _hash_tenants(
    tenants: list[str], salt: bytes, progress: Callable[[float], None], chunk: int = 131072
) -> np.ndarray:
    out = np.empty(len(tenants), dtype=np.uint64)
    for lo in range(0, len(tenants), chunk):
        out[lo : lo + chunk] = tenant_hashes(tenants[lo : lo + chunk], salt)
        progress(min(1.0, (lo + chunk) / max(1, len(tenants))))
    return out


def _moved(
    before: np.ndarray, after: np.ndarray, fleet: Fleet, traffic: Traffic,
    p_before: np.ndarray, p_after: np.ndarray,
) -> tuple[np.ndarray, int, float]:  # fmt: skip
    """(moved tenants mask, bytes to load on new members, traffic share rerouted)."""
    fresh = new_members(before, after)
    moved = fresh > 0
    moved_bytes = int((fleet.tenant_bytes() * fresh).sum())
    rerouted = float(traffic.popularity[p_before != p_after].sum())
    return moved, moved_bytes, rerouted


def _placed_bytes(fleet: Fleet, shards: Shards) -> int:
    return int((fleet.tenant_bytes() * shards.k).sum())


def _join(
    pool: Pool, fleet: Fleet, traffic: Traffic, shards: Shards, hashes: np.ndarray,
    overrides: Mapping[str, TenantConfig], primary: np.ndarray, pidx: np.ndarray,
    progress: Callable[[float], None],
) -> Movement:  # fmt: skip
    """A new worker joins (next zone in round-robin order), appended so the other members keep
    their indices. Only shards the newcomer enters change; without zones a shard is the top k
    by score, so it enters exactly when it outscores the tenant's weakest member (its last):
    a two-member ``shard_matrix`` duel per weakest member decides, and only the entered tenants
    are re-placed. With zones every tenant is re-placed."""
    n = len(pool)
    zones = sorted({m.zone for m in pool.members})
    zone = zones[n % len(zones)]
    ids = {m.worker_id for m in pool.members}
    new_id = next(f"joining-{i}" for i in range(n + 1) if f"joining-{i}" not in ids)
    newcomer = Member(new_id, "", zone)
    joined = Pool((*pool.members, newcomer), pool.salt, pool.shard_size)
    if pool.n_zones > 1:
        after_rows = tenant_shards(joined, fleet.tenants, hashes, overrides, progress).rows
    else:
        free = np.flatnonzero(~shards.pinned)  # pinned shards ignore newcomers
        weakest = shards.rows[free, shards.k[free] - 1]
        by_weakest = np.argsort(weakest, kind="stable")
        bounds = np.searchsorted(weakest[by_weakest], np.arange(n + 1))
        entered: list[np.ndarray] = []
        for w in range(n):
            sel = free[by_weakest[bounds[w] : bounds[w + 1]]]
            if len(sel):
                duel = Pool((pool.members[w], newcomer), pool.salt, 1)
                entered.append(sel[shard_matrix(duel, hashes[sel], 1)[:, 0] == 1])
            progress((w + 1) / (n + 1))
        hit = np.sort(np.concatenate(entered)) if entered else np.empty(0, dtype=np.int64)
        after_rows = shards.rows.copy()
        names = [fleet.tenants[i] for i in hit.tolist()]
        sub = {t: overrides[t] for t in names if t in overrides}
        part = tenant_shards(joined, names, hashes[hit], sub)
        after_rows[hit, : part.rows.shape[1]] = part.rows
    p_after = after_rows[fleet.model_tenant, pidx]
    moved, moved_bytes, rerouted = _moved(shards.rows, after_rows, fleet, traffic, primary, p_after)
    expect = float((shards.k / (n + 1)).mean())
    return _movement("join", new_id, moved, moved_bytes, rerouted, expect, 1 / (n + 1), fleet,
                     shards)  # fmt: skip


def _leave(
    pool: Pool, fleet: Fleet, traffic: Traffic, shards: Shards, hashes: np.ndarray,
    overrides: Mapping[str, TenantConfig], primary: np.ndarray, pidx: np.ndarray, leaver: int,
) -> Movement:  # fmt: skip
    """Worker ``leaver`` leaves. Only shards holding it change (a property of the shard
    function, tested in tests/placement/test_shard.py), so only those tenants are re-placed —
    unless its zone empties, which changes every zone cap: then all are."""
    n = len(pool)
    rest = tuple(m for i, m in enumerate(pool.members) if i != leaver)
    left = Pool(rest, pool.salt, pool.shard_size)
    remap = np.arange(n, dtype=np.int64) - (np.arange(n) > leaver)
    remap[leaver] = -2  # matches nothing after the leave
    before = np.where(shards.rows >= 0, remap[np.maximum(shards.rows, 0)], -1)
    if left.n_zones == pool.n_zones:
        after_rows = before.copy()
        hit = np.flatnonzero((shards.rows == leaver).any(axis=1))
        names = [fleet.tenants[i] for i in hit.tolist()]
        sub = {t: overrides[t] for t in names if t in overrides}
        part = tenant_shards(left, names, hashes[hit], sub)
        after_rows[hit] = -1
        after_rows[hit, : part.rows.shape[1]] = part.rows
    else:
        after_rows = tenant_shards(left, fleet.tenants, hashes, overrides).rows
    p_before = before[fleet.model_tenant, pidx]
    p_after = after_rows[fleet.model_tenant, pidx]
    moved, moved_bytes, rerouted = _moved(before, after_rows, fleet, traffic, p_before, p_after)
    expect = float((shards.k / n).mean())
    return _movement("leave", pool.members[leaver].worker_id, moved, moved_bytes, rerouted,
                     expect, 1 / n, fleet, shards)  # fmt: skip


def _movement(
    event: str, worker_id: str, moved: np.ndarray, moved_bytes: int, rerouted: float,
    expect_tenants: float, expect_bytes: float, fleet: Fleet, shards: Shards,
) -> Movement:  # fmt: skip
    t = len(moved)
    share = float(moved.mean())
    return Movement(
        event=event,
        worker_id=worker_id,
        tenants=Versus(share, expect_tenants, math.sqrt(share * (1 - share) / t)),
        bytes_moved=moved_bytes,
        bytes_share=Versus(moved_bytes / max(1, _placed_bytes(fleet, shards)), expect_bytes),
        traffic=rerouted,
    )


def _cache(
    traffic: Traffic, primary: np.ndarray, sizes: np.ndarray, n: int, config: SimConfig,
    progress: Callable[[float], None],
) -> tuple[CacheFigures, np.ndarray, np.ndarray]:  # fmt: skip
    """Per-worker streams (time order kept), their stack distances, and the figures; then the
    steady state from the popularity."""
    requests = traffic.requests
    r = len(requests)
    worker = primary[requests]
    # A stable sort by worker keeps each stream in time order; small ints sort by radix.
    order = np.argsort(worker.astype(np.int16) if n < 2**15 else worker, kind="stable")
    seg = worker[order]
    items = requests[order]
    progress(0.1)
    dist = stack_distances(items, seg, sizes[items])
    progress(0.8)
    measured = order >= math.ceil(config.warmup * r)
    w_measured = np.bincount(seg[measured], minlength=n).astype(np.float64)
    hit = measured & (dist != COLD) & (dist <= config.budget_bytes)
    w_hit = np.bincount(seg[hit], minlength=n).astype(np.float64)
    m_total = int(measured.sum())
    finite = np.sort(dist[measured & (dist != COLD)])
    hit_rate = float(hit.sum() / m_total) if m_total else math.nan
    max_hit = len(finite) / m_total if m_total else math.nan

    # The curve spans one model to the budget where only first requests miss; the configured
    # budget is added as a point of its own.
    lo = max(1, int(sizes.min()))
    hi = max(int(finite[-1]) if len(finite) else lo, lo)
    routed = np.bincount(primary[traffic.popularity > 0], weights=sizes[traffic.popularity > 0],
                         minlength=n)  # fmt: skip
    hi = max(hi, int(routed.max()))  # where the steady state holds everything it is asked for
    budgets = np.unique(
        np.append(np.geomspace(lo, hi, config.curve_points).astype(np.int64), config.budget_bytes)
    )
    curve_hits = np.searchsorted(finite, budgets, side="right")
    curve = [
        CurvePoint(int(b), float(h / m_total) if m_total else math.nan)
        for b, h in zip(budgets.tolist(), curve_hits.tolist(), strict=True)
    ]

    bounds = np.searchsorted(seg, np.arange(n + 1))
    budget_for = []
    for target in config.targets:
        overall = _quantile_budget(finite, m_total, target)
        worst: int | None = 0
        for w in range(n):
            s, e = bounds[w], bounds[w + 1]
            mw = measured[s:e]
            if not mw.any():
                continue
            dw = dist[s:e][mw]
            need = _quantile_budget(dw[dw != COLD], len(dw), target, presorted=False)
            worst = None if need is None or worst is None else max(worst, need)
        budget_for.append(BudgetFor(target, overall, worst))
    progress(0.95)
    che = CheTable(primary, traffic.popularity, sizes, n)
    steady_targets = []
    for target in config.targets:
        overall_b, every_b = che.budget_for(target)
        steady_targets.append(BudgetFor(target, _ceil_or_none(overall_b), _ceil_or_none(every_b)))
    steady = SteadyState(
        hit_rate=che.hit_rate_at(config.budget_bytes),
        worker_hit_rate=Spread.of(che.worker_hit_rates(config.budget_bytes)),
        curve=[CurvePoint(p.budget_bytes, che.hit_rate_at(p.budget_bytes)) for p in curve],
        budget_for=steady_targets,
    )
    progress(1.0)
    figures = CacheFigures(
        budget_bytes=config.budget_bytes,
        requests=r,
        measured=m_total,
        warmup=config.warmup,
        hit_rate=hit_rate,
        max_hit_rate=max_hit,
        curve=curve,
        budget_for=budget_for,
        steady_state=steady,
    )
    return figures, w_hit, w_measured


def _ceil_or_none(x: float) -> int | None:
    return None if math.isinf(x) or math.isnan(x) else math.ceil(x)


def _quantile_budget(
    finite: np.ndarray, total: int, target: float, presorted: bool = True
) -> int | None:
    """Smallest budget under which at least ``target`` of ``total`` requests hit, given the
    finite stack distances; None when even an unbounded cache falls short."""
    need = math.ceil(target * total - 1e-9)
    if total == 0 or need > len(finite):
        return None
    if need <= 0:
        return 0
    if presorted:
        return int(finite[need - 1])
    return int(np.partition(finite, need - 1)[need - 1])
