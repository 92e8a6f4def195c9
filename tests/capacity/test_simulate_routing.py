"""The simulator routes each model version to the worker the gateway's member policy picks
first (its primary), and its per-worker hit rates equal an LRU replay of each worker's stream."""

from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict

import numpy as np
import pytest

from capacity.inputs import (
    SizeModel,
    add_scans,
    synthetic_fleet,
    synthetic_members,
    zipf_traffic,
)
from capacity.model import SimConfig
from capacity.run import simulate
from shoal.records import Member, TenantConfig
from shoal.shard import Placement, Pool, member_order, primary_indices
from worker.cache import Tier, TieredCache

SALT = b"simulate-test-salt"


def _router_choice(pool: Pool, ranked: tuple[Member, ...], k: int, key: str) -> Member:
    """The member the gateway's policy tries first for ``key`` (idle, every member healthy)."""
    index = {m.worker_id: i for i, m in enumerate(pool.members)}
    n = len(pool.members)
    order = member_order([index[m.worker_id] for m in ranked], k, key, 8, [0] * n, [False] * n)
    return pool.members[order[0]]


def test_primary_is_the_routers_choice() -> None:
    pool = Pool(synthetic_members(20, 1), SALT, 4)
    placement = Placement(pool, {"big": TenantConfig("big", shard_size=7)})
    keys = [f"tenant-{i % 97}/model-{i}:{1 + i % 3}" for i in range(500)] + ["big/m:1"] * 3
    tenants = [key.partition("/")[0] for key in keys]
    ks = np.array([placement.shard_size(t) for t in tenants])
    idx = primary_indices(keys, ks)
    for key, t, i in zip(keys, tenants, idx.tolist(), strict=True):
        ranked, k = placement.ranked(t)
        assert _router_choice(pool, ranked, k, key) == ranked[i]


def _lru_hits(stream: list[int], sizes: np.ndarray, budget: int, skip: int) -> tuple[int, int]:
    cache: OrderedDict[int, int] = OrderedDict()
    used = hits = counted = 0
    for pos, m in enumerate(stream):
        hit = m in cache
        if hit:
            cache.move_to_end(m)
        else:
            cache[m] = int(sizes[m])
            used += int(sizes[m])
            while used > budget:
                used -= cache.popitem(last=False)[1]
        if pos >= skip:
            counted += 1
            hits += hit
    return hits, counted


def test_per_worker_hit_rates_equal_an_lru_replay_of_each_workers_stream() -> None:
    rng = np.random.default_rng(11)
    fleet = synthetic_fleet(3000, SizeModel(50_000, 1.0), rng, models_per_tenant=3)
    traffic = zipf_traffic(fleet, 0.9, 30_000, 500.0, rng)
    config = SimConfig(
        workers=8, shard_size=3, budget_bytes=20 << 20, warmup=0.2, targets=(0.3, 0.5),
        pairs=100, policy="lru",
    )  # fmt: skip
    report = simulate(fleet, traffic, config)
    # Route with the live code: Placement for the shard, the router's policy for the primary.
    pool = Pool(synthetic_members(8, 1), config.pool_salt(), 3)
    placement = Placement(pool)
    keys = fleet.model_keys()
    owner = []
    for m, key in enumerate(keys):
        ranked, k = placement.ranked(fleet.tenants[int(fleet.model_tenant[m])])
        owner.append(_router_choice(pool, ranked, k, key).worker_id)
    skip = math.ceil(0.2 * len(traffic.requests))
    total_hits = total = 0
    for row in report.per_worker:
        times = [i for i, m in enumerate(traffic.requests.tolist()) if owner[m] == row.worker_id]
        stream = [int(traffic.requests[i]) for i in times]
        first_counted = sum(1 for i in times if i < skip)
        hits, counted = _lru_hits(stream, fleet.sizes, config.budget_bytes, first_counted)
        assert row.hit_rate == pytest.approx(hits / counted, abs=1e-12)
        total_hits += hits
        total += counted
    assert report.cache.hit_rate == pytest.approx(total_hits / total, abs=1e-12)
    assert report.cache.measured == total
    curve = {p.budget_bytes: p.hit_rate for p in report.cache.curve}
    assert curve[config.budget_bytes] == pytest.approx(report.cache.hit_rate)
    rates = [p.hit_rate for p in report.cache.curve]
    assert rates == sorted(rates)  # LRU has the inclusion property: more bytes never hurt
    reachable = [need for need in report.cache.budget_for if need.overall is not None]
    assert reachable
    for need in reachable:
        assert need.overall is not None
        at = simulate(fleet, traffic, dataclasses.replace(config, budget_bytes=need.overall))
        below = simulate(fleet, traffic, dataclasses.replace(config, budget_bytes=need.overall - 1))
        assert at.cache.hit_rate >= need.target > below.cache.hit_rate


def _worker_policy_hits(
    stream: list[int], sizes: np.ndarray, budget: int, skip: int
) -> tuple[int, int]:
    """The worker's own cache class under its default policy (W-TinyLFU), as it serves."""
    cache: TieredCache[int, str] = TieredCache({Tier.HOST: budget}, policy="tinylfu")
    hits = counted = 0
    for pos, m in enumerate(stream):
        hit = cache.get(m) is not None
        if not hit:
            cache.admit(m, "model", int(sizes[m]), Tier.HOST)
        if pos >= skip:
            counted += 1
            hits += hit
    return hits, counted


def test_tinylfu_hit_rates_equal_the_worker_cache_replayed_on_each_workers_stream() -> None:
    """The simulator's default policy is the worker's class, exactly (scans included)."""
    rng = np.random.default_rng(12)
    fleet = synthetic_fleet(3000, SizeModel(50_000, 1.0), rng, models_per_tenant=3)
    traffic = add_scans(zipf_traffic(fleet, 0.9, 30_000, 500.0, rng), 3000, 2000, 400, rng)
    config = SimConfig(workers=8, shard_size=3, budget_bytes=20 << 20, warmup=0.2, pairs=100)
    assert config.policy == "tinylfu"
    report = simulate(fleet, traffic, config)
    pool = Pool(synthetic_members(8, 1), config.pool_salt(), 3)
    placement = Placement(pool)
    owner = []
    for m, key in enumerate(fleet.model_keys()):
        ranked, k = placement.ranked(fleet.tenants[int(fleet.model_tenant[m])])
        owner.append(_router_choice(pool, ranked, k, key).worker_id)
    skip = math.ceil(0.2 * len(traffic.requests))
    requests = traffic.requests.tolist()
    for row in report.per_worker:
        times = [i for i, m in enumerate(requests) if owner[m] == row.worker_id]
        stream = [requests[i] for i in times]
        first_counted = sum(1 for i in times if i < skip)
        hits, counted = _worker_policy_hits(stream, fleet.sizes, config.budget_bytes, first_counted)
        assert row.hit_rate == pytest.approx(hits / counted, abs=1e-12)
    assert "W-TinyLFU" in report.cache.method
