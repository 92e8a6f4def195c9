"""The fleet simulator (capacity/) held to closed forms and to the live code paths:
the shard function (``Placement``), the router's member choice, an LRU replay."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capacity.inputs import (
    Fleet,
    InputError,
    SizeModel,
    Traffic,
    read_registry,
    read_trace,
    synthetic_fleet,
    synthetic_members,
    trace_traffic,
    zipf_traffic,
)
from capacity.model import HotRule, SimConfig
from capacity.run import simulate
from capacity.shards import hot_overrides, tenant_shards
from capacity.stats import blast_radius, hypergeometric, touch_probability
from shoal.artifacts import Signature
from shoal.records import (
    CLUSTER,
    ClusterConfig,
    Member,
    ModelRecord,
    ModelVersion,
    PoolSnapshot,
    TenantConfig,
    model_key,
    placement_key,
    tenant_key,
)
from shoal.shard import (
    Placement,
    Pool,
    shard_matrix,
    tenant_hashes,
)
from shoal.state import MemoryStore

SALT = b"simulate-test-salt"


def _shards(n: int, k: int, t: int, salt: bytes = SALT) -> np.ndarray:
    pool = Pool(synthetic_members(n, 1), salt, k)
    return shard_matrix(pool, tenant_hashes([f"t{i}" for i in range(t)], salt), k)


# --- closed forms ----------------------------------------------------------------------------


def test_closed_forms_are_distributions() -> None:
    for n, k in [(8, 2), (16, 4), (64, 4), (10, 10)]:
        p = hypergeometric(n, k)
        assert math.isclose(sum(p), 1.0)
        assert math.isclose(touch_probability(n, k), 1 - p[0])


def test_full_overlap_share_within_sampling_error_of_one_over_c_n_k() -> None:
    n, k, t = 10, 3, 20_000  # C(10,3) = 120 shard sets: many equal pairs to count
    b = blast_radius(_shards(n, k, t), n, np.random.default_rng(1), pairs=10_000, victims=4)
    assert b is not None
    full = b.full_overlap_probability
    assert full.closed_form == 1 / math.comb(n, k)
    assert abs(full.simulated - full.closed_form) < 5 * full.stderr
    mean = b.expected_full_overlap_tenants
    assert abs(mean.simulated - (t - 1) / math.comb(n, k)) < 5 * mean.stderr


def test_overlap_distribution_matches_the_hypergeometric() -> None:
    n, k, t, pairs = 16, 4, 20_000, 400_000
    b = blast_radius(_shards(n, k, t), n, np.random.default_rng(2), pairs=pairs, victims=16)
    assert b is not None
    assert [o.shared_workers for o in b.overlap] == list(range(k + 1))
    for o, expected in zip(b.overlap, hypergeometric(n, k), strict=True):
        assert o.closed_form == expected
        sd = math.sqrt(expected * (1 - expected) / pairs)  # per-bin binomial bound
        assert abs(o.simulated - expected) < 5 * sd + 1e-12, o
    lose = b.losing_a_worker
    assert lose.closed_form == touch_probability(n, k)
    # Each victim's share is exact over T tenants; victims differ only by the population's
    # own spread, so a generous bound around the closed form holds.
    assert abs(lose.simulated - lose.closed_form) < 0.02


def _small(
    models: int = 20_000, workers: int = 16, k: int = 4, zones: int = 1
) -> tuple[Fleet, Traffic, SimConfig]:
    rng = np.random.default_rng(7)
    fleet = synthetic_fleet(models, SizeModel(1 << 20, 0.5), rng)
    traffic = zipf_traffic(fleet, 1.0, 50_000, 1000.0, rng)
    config = SimConfig(workers=workers, shard_size=k, zones=zones, budget_bytes=64 << 20)
    return fleet, traffic, config


def test_movement_on_join_within_sampling_error_of_k_over_n_plus_one() -> None:
    fleet, traffic, config = _small()
    report = simulate(fleet, traffic, config)
    join, leave = report.movement
    n, k, t = 16, 4, 20_000
    expected = k / (n + 1)
    assert join.tenants.closed_form == pytest.approx(expected)
    assert abs(join.tenants.simulated - expected) < 5 * math.sqrt(expected * (1 - expected) / t)
    # Every moved tenant copies its models once to the newcomer: bytes share ~ 1/(N+1).
    assert join.bytes_share.simulated == pytest.approx(1 / (n + 1), rel=0.1)
    # The leaver is the worker holding the most bytes: its tenants are exactly those that move.
    held = next(w for w in report.per_worker if w.worker_id == leave.worker_id)
    assert held.bytes == max(w.bytes for w in report.per_worker)
    assert leave.bytes_moved == held.bytes


@pytest.mark.parametrize("zones", [1, 3])
def test_join_and_leave_equal_a_full_replacement(zones: int) -> None:
    """The join/leave shortcuts (re-placing only affected tenants) equal re-placing all."""
    fleet, traffic, config = _small(models=6000, workers=12, k=3, zones=zones)
    report = simulate(fleet, traffic, config)
    join, leave = report.movement
    members = synthetic_members(12, zones)
    salt = config.pool_salt()
    pool = Pool(members, salt, 3)
    h = tenant_hashes(fleet.tenants, salt)
    before = [set(r) for r in shard_matrix(pool, h, 3).tolist()]
    zone_names = sorted({m.zone for m in members})
    joined = Pool((*members, Member(join.worker_id, "", zone_names[12 % len(zone_names)])), salt, 3)
    after = [set(r) for r in shard_matrix(joined, h, 3).tolist()]
    assert join.tenants.simulated == np.mean([a != b for a, b in zip(before, after, strict=True)])
    gone = next(i for i, m in enumerate(members) if m.worker_id == leave.worker_id)
    left = Pool(tuple(m for m in members if m.worker_id != leave.worker_id), salt, 3)
    ids_before = [{members[i].worker_id for i in r} for r in before]
    ids_after = [{left.members[i].worker_id for i in r} for r in shard_matrix(left, h, 3).tolist()]
    moved = np.mean([a != b for a, b in zip(ids_before, ids_after, strict=True)])
    assert leave.tenants.simulated == moved
    assert moved == np.mean([gone in r for r in before])


# --- the live code paths -------------------------------------------------------------------


@st.composite
def pools_and_overrides(draw: st.DrawFn) -> tuple[Pool, list[str], dict[str, TenantConfig]]:
    n = draw(st.integers(3, 24))
    zones = draw(st.sampled_from([1, 1, 2, 3]))
    members = synthetic_members(n, zones)
    k = draw(st.integers(1, n))
    pool = Pool(members, draw(st.binary(min_size=8, max_size=32)), k)
    tenants = [f"tenant-{i}" for i in range(300)]
    overrides: dict[str, TenantConfig] = {}
    for t in draw(st.lists(st.sampled_from(tenants), max_size=20, unique=True)):
        if draw(st.booleans()):
            overrides[t] = TenantConfig(t, shard_size=draw(st.integers(1, n + 2)))
        else:
            ids = draw(st.lists(st.sampled_from([m.worker_id for m in members]), min_size=1,
                                max_size=4, unique=True))  # fmt: skip
            overrides[t] = TenantConfig(t, members=(*ids, "not-in-pool"))
    return pool, tenants, overrides


@settings(max_examples=40, deadline=None)
@given(pools_and_overrides())
def test_simulated_shards_equal_the_live_placement(
    case: tuple[Pool, list[str], dict[str, TenantConfig]],
) -> None:
    pool, tenants, overrides = case
    shards = tenant_shards(pool, tenants, tenant_hashes(tenants, pool.salt), overrides, chunk=64)
    live = Placement(pool, overrides)
    for i, t in enumerate(tenants):
        expected = [pool.members.index(m) for m in live.shard(t)]
        assert shards.rows[i, : shards.k[i]].tolist() == expected
        assert (shards.rows[i, shards.k[i] :] == -1).all()


def test_simulation_places_hot_tenants_as_the_live_placement_does() -> None:
    rng = np.random.default_rng(3)
    fleet = synthetic_fleet(5000, SizeModel(1000), rng)
    traffic = zipf_traffic(fleet, 1.2, 1000, 100.0, rng)
    tenant_pop = np.bincount(fleet.model_tenant, weights=traffic.popularity)
    overrides = hot_overrides(fleet, tenant_pop, (HotRule(10, 8), HotRule(50, 6)))
    assert {c.shard_size for c in overrides.values()} == {8, 6}
    assert overrides[fleet.tenants[0]].shard_size == 8  # the most requested tenant
    assert len(overrides) == 50
    pool = Pool(synthetic_members(32, 2), SALT, 4)
    shards = tenant_shards(pool, fleet.tenants, tenant_hashes(fleet.tenants, SALT), overrides)
    live = Placement(pool, overrides)
    sample = rng.choice(len(fleet.tenants), 400, replace=False).tolist() + list(range(60))
    for i in sample:
        expected = [pool.members.index(m) for m in live.shard(fleet.tenants[i])]
        assert shards.rows[i, : shards.k[i]].tolist() == expected


def test_per_worker_figures_add_up() -> None:
    fleet, traffic, config = _small(models=4000, workers=10, k=3)
    report = simulate(fleet, traffic, config)
    rows = report.per_worker
    assert sum(r.models for r in rows) == 3 * fleet.n_models
    assert sum(r.bytes for r in rows) == 3 * int(fleet.sizes.sum())
    assert sum(r.primary_models for r in rows) == fleet.n_models
    assert sum(r.load_rps for r in rows) == pytest.approx(traffic.rps)
    w = report.workers
    assert w.load_rps.min <= w.load_rps.mean <= w.load_rps.p99 <= w.load_rps.max
    assert w.models.max_over_mean == pytest.approx(w.models.max / w.models.mean)


def test_rejects_a_shard_larger_than_the_pool() -> None:
    fleet, traffic, _ = _small(models=100)
    with pytest.raises(InputError, match="shard size"):
        simulate(fleet, traffic, SimConfig(workers=3, shard_size=4))


# --- inputs ----------------------------------------------------------------------------------


def test_zipf_traffic_is_ranked_and_normalised() -> None:
    rng = np.random.default_rng(0)
    fleet = synthetic_fleet(1000, SizeModel(10), rng, models_per_tenant=2)
    t = zipf_traffic(fleet, 1.0, 20_000, 50.0, rng)
    assert t.popularity.sum() == pytest.approx(1.0)
    tenant_pop = np.bincount(fleet.model_tenant, weights=t.popularity)
    assert (np.diff(tenant_pop) <= 1e-15).all()
    assert tenant_pop[0] / tenant_pop[9] == pytest.approx(10.0)
    counts = np.bincount(t.requests, minlength=fleet.n_models)
    assert counts[:2].sum() / len(t.requests) == pytest.approx(tenant_pop[0], rel=0.1)


def test_size_model_median() -> None:
    rng = np.random.default_rng(0)
    assert (SizeModel(123).sample(5, rng) == 123).all()
    draws = SizeModel(1 << 20, 0.8).sample(50_000, rng)
    assert np.median(draws) == pytest.approx(1 << 20, rel=0.03)
    with pytest.raises(InputError):
        SizeModel(0)


def test_read_trace_csv_and_jsonl(tmp_path: Path) -> None:
    csv_path = tmp_path / "t.csv"
    csv_path.write_text("timestamp,tenant,model\n2.0,acme,churn\n1.0,acme,acme/churn\n3,beta\n")
    reqs = read_trace(csv_path)
    assert [(r.timestamp, r.tenant, r.model) for r in reqs] == [
        (1.0, "acme", "churn"), (2.0, "acme", "churn"), (3.0, "beta", "default"),
    ]  # fmt: skip
    jl = tmp_path / "t.jsonl"
    jl.write_text(
        '{"ts": 0, "tenant": "acme", "model": "churn"}\n\n'
        '{"timestamp": 4, "model": "beta/fraud"}\n{"ts": 2, "tenant": "acme"}\n'
    )
    assert [(r.tenant, r.model) for r in read_trace(jl)] == [
        ("acme", "churn"), ("acme", "default"), ("beta", "fraud"),
    ]  # fmt: skip
    bad = tmp_path / "bad.csv"
    bad.write_text("1,acme\nsoon,acme\n")
    with pytest.raises(InputError, match="line 2"):
        read_trace(bad)
    with pytest.raises(InputError, match="does not belong"):
        read_trace(_write(tmp_path / "x.csv", "1,acme,beta/churn\n"))


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_trace_traffic_popularity_and_rate(tmp_path: Path) -> None:
    lines = [f"{i * 0.5},{'acme' if i % 4 else 'beta'},m{i % 2}" for i in range(41)]
    trace = read_trace(_write(tmp_path / "t.csv", "\n".join(lines)))
    fleet, traffic = trace_traffic(trace, SizeModel(100), np.random.default_rng(0))
    assert traffic.rps == pytest.approx(41 / 20.0)
    assert sorted(fleet.tenants) == ["acme", "beta"]
    assert fleet.n_models == 3 and (fleet.sizes == 100).all()  # beta only ever asks m0
    assert traffic.popularity.sum() == pytest.approx(1.0)
    counts = np.bincount(traffic.requests, minlength=3)
    assert counts.sum() == 41
    report = simulate(fleet, traffic, SimConfig(workers=4, shard_size=2, pairs=1000))
    assert report.inputs.requests == 41


def _version(v: int, size: int, framework: str = "xgboost", pool: str = "cpu") -> ModelVersion:
    return ModelVersion(v, f"file:///{v}", framework, "json", pool, "0" * 64, size,
                        Signature((), ()))  # fmt: skip


async def test_read_registry_and_simulate_the_live_pool() -> None:
    store = MemoryStore()
    records = [
        ModelRecord("acme", "churn", {1: _version(1, 1000), 2: _version(2, 3000)},
                    aliases={"stable": 1}),
        ModelRecord("acme", "fraud", {1: _version(1, 500, "onnx"), 2: _version(2, 700, "onnx")},
                    traffic={1: 90, 2: 10}),
        ModelRecord("beta", "churn", {1: _version(1, 100), 3: _version(3, 200)}),
        ModelRecord("gamma", "gpu-only", {1: _version(1, 100, pool="gpu")}),
    ]  # fmt: skip
    for rec in records:
        await store.put(model_key(rec.tenant, rec.name), rec.encode())
    for i in range(30):
        rec = ModelRecord(f"t{i}", "m", {1: _version(1, 10_000)})
        await store.put(model_key(rec.tenant, rec.name), rec.encode())
    await store.put(tenant_key("acme"), TenantConfig("acme", shard_size=5).encode())
    await store.put(tenant_key("beta"), TenantConfig("beta", members=("w1", "w3")).encode())
    await store.put(CLUSTER, ClusterConfig(salt="ab" * 16).encode())
    members = tuple(Member(f"w{i}", f"h:{i}", f"z{i % 2}") for i in range(8))
    snap = PoolSnapshot("cpu", 3, members, 2)
    await store.put(placement_key("cpu"), snap.encode())

    reg = await read_registry(store, "cpu", {"onnx": 2.0})
    f = reg.fleet
    sizes = {f"{f.tenants[t]}/{n}": int(s) for t, n, s in zip(
        f.model_tenant.tolist(), f.model_names, f.sizes.tolist(), strict=True)}  # fmt: skip
    assert sizes["acme/churn"] == 1000  # the stable alias
    assert sizes["acme/fraud"] == 2 * (500 + 700)  # both split versions, onnx factor 2
    assert sizes["beta/churn"] == 200  # the newest
    assert "gamma/gpu-only" not in sizes
    assert reg.salt == bytes.fromhex("ab" * 16) and reg.snapshot == snap
    keys = dict(zip(sizes, f.model_keys(), strict=True))
    assert keys["acme/fraud"] == "acme/fraud:1"  # the version with the largest share

    rng = np.random.default_rng(0)
    traffic = zipf_traffic(f, 1.0, 2000, 10.0, rng)
    config = SimConfig(shard_size=snap.shard_size, salt=reg.salt, members=snap.members, pairs=500)
    report = simulate(f, traffic, config)
    assert report.inputs.workers == 8 and report.inputs.pinned_tenants == 1
    live = Placement(Pool.from_snapshot(snap, bytes.fromhex("ab" * 16)), f.overrides)
    shards = tenant_shards(live.pool, f.tenants, tenant_hashes(f.tenants, live.pool.salt),
                           f.overrides)  # fmt: skip
    for i, t in enumerate(f.tenants):
        expected = [members.index(m) for m in live.shard(t)]
        assert shards.rows[i, : shards.k[i]].tolist() == expected


def test_fleet_validation() -> None:
    with pytest.raises(InputError):
        Fleet([], np.empty(0, np.int64), [], np.empty(0, np.int64), np.empty(0, np.int64))
    with pytest.raises(InputError):
        synthetic_fleet(0, SizeModel(1), np.random.default_rng(0))


def test_report_is_json_serialisable() -> None:
    from capacity.report import dumps, render_table

    fleet, traffic, config = _small(models=2000, workers=6, k=2)
    report = simulate(fleet, traffic, config)
    doc = json.loads(dumps(report))
    assert doc["inputs"]["workers"] == 6 and len(doc["per_worker"]) == 6
    assert len(doc["blast_radius"]["overlap"]) == 3
    text = render_table(report)
    assert "Blast radius" in text and "closed form" in text and "hit rate" in text


def test_traffic_shape_is_checked() -> None:
    rng = np.random.default_rng(0)
    fleet = synthetic_fleet(10, SizeModel(1), rng)
    with pytest.raises(InputError):
        zipf_traffic(fleet, -1.0, 10, 1.0, rng)
    assert isinstance(zipf_traffic(fleet, 0.0, 10, 1.0, rng), Traffic)


def test_steady_state_che_agrees_with_the_exact_replay_of_a_long_trace() -> None:
    """Che's approximation (the steady-state view) against the exact replay, where the trace
    is long enough (~200 requests per model) for first-request misses to be negligible."""
    rng = np.random.default_rng(5)
    fleet = synthetic_fleet(2000, SizeModel(100_000, 0.8), rng)
    traffic = zipf_traffic(fleet, 0.9, 400_000, 1000.0, rng)
    config = SimConfig(
        workers=4, shard_size=2, budget_bytes=8 << 20, warmup=0.5, pairs=100, policy="lru"
    )
    cache = simulate(fleet, traffic, config).cache
    assert cache.steady_state.hit_rate == pytest.approx(cache.hit_rate, abs=0.015)
    for exact, che in zip(cache.curve, cache.steady_state.curve, strict=True):
        assert exact.budget_bytes == che.budget_bytes
        assert che.hit_rate == pytest.approx(exact.hit_rate, abs=0.02)
    for need in cache.steady_state.budget_for:
        assert need.overall is not None and need.every_worker is not None
        assert need.overall <= need.every_worker
