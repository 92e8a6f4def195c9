"""Properties of the shard function (placement/shard.py), over random pools, zones, tenants."""

from __future__ import annotations

import itertools
import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.records import Member, TenantConfig
from shoal.shard import Placement, Pool, selection_order, shard_matrix, tenant_hashes

tenant_ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=20)


@st.composite
def pools(
    draw: st.DrawFn, min_size: int = 2, max_size: int = 40, zoned: bool | None = None
) -> Pool:
    n = draw(st.integers(min_size, max_size))
    use_zones = draw(st.booleans()) if zoned is None else zoned
    n_zones = draw(st.integers(2, 4)) if use_zones else 1
    members = tuple(
        Member(
            f"w{i}",
            f"127.0.0.1:{9000 + i}",
            f"z{draw(st.integers(0, n_zones - 1))}" if use_zones else "",
        )
        for i in range(n)
    )
    salt = draw(st.binary(min_size=8, max_size=32))
    k = draw(st.integers(1, min(6, n)))
    return Pool(members, salt, k)


def shard(pool: Pool, tenant: str, k: int | None = None) -> list[str]:
    k = pool.shard_size if k is None else k
    return [pool.members[i].worker_id for i in selection_order(pool, tenant, k)[:k]]


@given(pools(), tenant_ids)
def test_k_distinct_and_deterministic(pool: Pool, tenant: str) -> None:
    a = shard(pool, tenant)
    assert len(a) == pool.shard_size == len(set(a))
    again = Pool(pool.members, pool.salt, pool.shard_size)
    assert shard(again, tenant) == a
    full = selection_order(pool, tenant)
    assert sorted(full) == list(range(len(pool)))  # the ranked order covers every member


@given(pools(min_size=6), st.binary(min_size=8, max_size=32))
def test_different_salt_gives_different_assignment(pool: Pool, other_salt: bytes) -> None:
    if other_salt == pool.salt:
        return
    other = Pool(pool.members, other_salt, pool.shard_size)
    tenants = [f"tenant-{i}" for i in range(64)]
    assert any(shard(pool, t) != shard(other, t) for t in tenants)


@given(pools(), tenant_ids, st.data())
def test_one_worker_joining_or_leaving_changes_at_most_one_member(
    pool: Pool, tenant: str, data: st.DataObject
) -> None:
    before = set(shard(pool, tenant))
    zones = sorted({m.zone for m in pool.members})
    new = Member("w-new", "127.0.0.1:1", data.draw(st.sampled_from(zones)))
    joined = Pool((*pool.members, new), pool.salt, pool.shard_size)
    after = set(shard(joined, tenant))
    assert len(after - before) <= 1 and len(before - after) <= 1
    if after != before:
        assert after - before == {"w-new"}
    gone = data.draw(st.sampled_from(pool.members))
    if len(pool) > pool.shard_size:
        left = Pool(tuple(m for m in pool.members if m != gone), pool.salt, pool.shard_size)
        after = set(shard(left, tenant))
        assert len(after - before) <= 1 and len(before - after) <= 1
        if gone.worker_id not in before:
            assert after == before


@given(pools(), tenant_ids)
def test_growing_k_keeps_the_old_members(pool: Pool, tenant: str) -> None:
    order = [shard(pool, tenant, k) for k in range(1, len(pool) + 1)]
    for small, big in itertools.pairwise(order):
        assert big[: len(small)] == small


@given(pools(zoned=True), tenant_ids)
def test_zone_spread(pool: Pool, tenant: str) -> None:
    z = pool.n_zones
    sizes = {
        zone: sum(m.zone == zone for m in pool.members) for zone in {m.zone for m in pool.members}
    }
    for k in range(1, len(pool) + 1):
        cap = math.ceil(k / z)
        if min(sizes.values()) < cap:
            break  # the cap cannot be met everywhere; the rule relaxes, nothing to hold
        picked = shard(pool, tenant, k)
        per_zone = {
            zone: sum(pool.members[int(w[1:])].zone == zone for w in picked) for zone in sizes
        }
        assert max(per_zone.values()) <= cap


@settings(max_examples=30, deadline=None)
@given(pools(max_size=24), st.integers(1, 5))
def test_vectorised_equals_scalar(pool: Pool, k: int) -> None:
    k = min(k, len(pool))
    tenants = [f"t{i}" for i in range(300)]
    matrix = shard_matrix(pool, tenant_hashes(tenants, pool.salt), k)
    for row, t in zip(matrix, tenants, strict=True):
        assert list(row) == selection_order(pool, t, k)[:k]


def test_join_moves_about_k_over_n_plus_one_of_tenants() -> None:
    n, k, t = 20, 4, 20000
    members = tuple(Member(f"w{i}", "") for i in range(n))
    pool = Pool(members, b"movement-salt", k)
    joined = Pool((*members, Member("w-new", "")), b"movement-salt", k)
    h = tenant_hashes([f"tenant-{i}" for i in range(t)], pool.salt)
    before = shard_matrix(pool, h, k)
    after = shard_matrix(joined, h, k)
    moved = np.mean(
        [set(a) != set(b) for a, b in zip(before.tolist(), after.tolist(), strict=True)]
    )
    expected = k / (n + 1)
    sigma = math.sqrt(expected * (1 - expected) / t)
    assert abs(moved - expected) < 5 * sigma


def test_per_worker_spread_is_close_to_random() -> None:
    n, k, t = 16, 4, 100_000
    pool = Pool(tuple(Member(f"w{i}", "") for i in range(n)), b"spread-salt", k)
    counts = np.bincount(
        shard_matrix(pool, tenant_hashes([f"t{i}" for i in range(t)], pool.salt), k).ravel(),
        minlength=n,
    )
    mean = t * k / n
    sd = math.sqrt(t * (k / n) * (1 - k / n))  # binomial spread of pure random placement
    assert counts.sum() == t * k
    assert np.all(np.abs(counts - mean) < 5 * sd)  # 5 sd of 25,000 is 2.7 %


def test_overrides_take_precedence() -> None:
    members = tuple(Member(f"w{i}", "") for i in range(10))
    pool = Pool(members, b"s", 2)
    placement = Placement(
        pool,
        {
            "hot": TenantConfig("hot", shard_size=5),
            "vip": TenantConfig("vip", members=("w7", "w3", "w-gone")),
        },
    )
    assert [m.worker_id for m in placement.shard("hot")][:2] == shard(pool, "hot", 2)
    assert len(placement.shard("hot")) == 5
    assert [m.worker_id for m in placement.shard("vip")] == ["w7", "w3"]
    ranked, k = placement.ranked("vip")
    assert (
        k == 2 and len(ranked) == 10 and {m.worker_id for m in ranked[2:]}.isdisjoint({"w7", "w3"})
    )
    assert placement.shard("plain") == tuple(
        members[i] for i in selection_order(pool, "plain", 2)[:2]
    )
