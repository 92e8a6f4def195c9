"""The hot-tenant controller: pure steps on a fake clock, the loop on MemoryStore and etcd."""

from __future__ import annotations

import secrets

from placement.hot import HotPolicy, HotTenantController, HotTenantLoop, sum_rates
from shoal.etcd import EtcdStore
from shoal.records import (
    ELECTION,
    LoadReport,
    Member,
    TenantConfig,
    load_key,
    tenant_key,
)
from shoal.shard import Placement, Pool
from shoal.state import Compare, MemoryStore, StateStore

POLICY = HotPolicy(threshold=100.0, base_shard=2, max_shard=6, cooldown_s=60.0, drain_s=30.0)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_grow_cool_down_announce_then_shrink() -> None:
    clock = Clock()
    c = HotTenantController(POLICY, clock)
    assert c.step({"acme": 50.0}, {"acme": None}) == []  # below the threshold

    (grown,) = c.step({"acme": 250.0}, {"acme": None})
    assert grown.shard_size == 5 and grown.hot_until == clock.t + 90.0  # ceil(2 * 2.5)
    assert c.step({"acme": 250.0}, {"acme": grown}) == []  # unchanged: nothing to write
    (bigger,) = c.step({"acme": 1000.0}, {"acme": grown})
    assert bigger.shard_size == 6  # capped at max_shard
    clock.t += 10
    assert c.step({"acme": 150.0}, {"acme": bigger}) == []  # still hot: never shrinks

    clock.t += 59  # below the threshold, but not yet for the whole cool-down
    assert c.step({"acme": 10.0}, {"acme": bigger}) == []
    clock.t += 1
    (announced,) = c.step({}, {"acme": bigger})
    assert announced.shard_size == 6 and announced.hot_until == clock.t + 30.0
    clock.t += 29
    assert c.step({}, {"acme": announced}) == []  # draining
    clock.t += 1
    (shrunk,) = c.step({}, {"acme": announced})
    assert shrunk.shard_size == 0 and shrunk.hot_until == 0.0
    assert c.managed == set()


def test_hot_again_while_draining_withdraws_the_shrink() -> None:
    clock = Clock()
    c = HotTenantController(POLICY, clock)
    (grown,) = c.step({"acme": 300.0}, {"acme": None})
    clock.t += 61
    (announced,) = c.step({}, {"acme": grown})
    clock.t += 5
    (kept,) = c.step({"acme": 300.0}, {"acme": announced})
    assert kept.shard_size == grown.shard_size and kept.hot_until > clock.t + 30.0
    clock.t += 30
    assert c.step({"acme": 300.0}, {"acme": kept}) == []


def test_operator_overrides_are_left_alone_and_takeover_adopts() -> None:
    clock = Clock()
    c = HotTenantController(POLICY, clock)
    vip = TenantConfig("vip", members=("w1", "w2"))
    pinned = TenantConfig("pinned", shard_size=3)
    assert c.step({"vip": 900.0, "pinned": 900.0}, {"vip": vip, "pinned": pinned}) == []
    # A new leader recognises a shard grown by its predecessor and restarts its cool-down.
    heir = HotTenantController(POLICY, clock)
    grown = TenantConfig("acme", shard_size=4, hot_until=clock.t + 5)
    heir.adopt([grown, vip, pinned])
    assert heir.managed == {"acme"}
    clock.t += 59
    assert heir.step({}, {"acme": grown}) == []
    clock.t += 1
    (announced,) = heir.step({}, {"acme": grown})
    assert announced.hot_until == clock.t + 30.0


def test_sum_rates_ignores_garbage() -> None:
    reports = [
        LoadReport("r1", {"a": 10.0, "b": -5.0}),
        LoadReport("r2", {"a": 5.0, "c": float("nan")}),
    ]
    assert sum_rates(reports) == {"a": 15.0}


async def _fenced(store: StateStore) -> Compare:
    rev = await store.put(ELECTION, b"me")
    return Compare(ELECTION, rev)


async def test_loop_on_memory_store_writes_configs_with_cas() -> None:
    clock = Clock()
    store = MemoryStore(now=clock)
    fence = await _fenced(store)
    await store.put(tenant_key("acme"), TenantConfig("acme", key_hashes=("h1",)).encode())
    loop = HotTenantLoop(store, HotTenantController(POLICY, clock), fence, interval_s=1.0)
    await store.put(load_key("r1"), LoadReport("r1", {"acme": 120.0}).encode())
    await store.put(load_key("r2"), LoadReport("r2", {"acme": 120.0, "small": 1.0}).encode())
    written = await loop.tick()
    assert [(c.tenant, c.shard_size) for c in written] == [("acme", 5)]
    kv = await store.get(tenant_key("acme"))
    assert kv is not None
    cfg = TenantConfig.decode(kv.value)
    assert cfg.shard_size == 5 and cfg.key_hashes == ("h1",)  # other fields kept
    assert await store.get(tenant_key("small")) is None


async def test_hot_tenant_gets_a_nested_larger_shard_in_etcd(etcd_url: str) -> None:
    """Real etcd: load above the threshold grows the shard; the old members stay first."""
    async with EtcdStore(etcd_url) as store:
        clock = Clock()
        fence = await _fenced(store)
        lease = await store.grant_lease(10)
        await store.put(
            load_key("router-1"), LoadReport("router-1", {"acme": 500.0}).encode(), lease.id
        )
        loop = HotTenantLoop(store, HotTenantController(POLICY, clock), fence, interval_s=1.0)
        await loop.tick()
        kv = await store.get(tenant_key("acme"))
        assert kv is not None
        cfg = TenantConfig.decode(kv.value)
        assert cfg.shard_size == 6

        pool = Pool(
            tuple(Member(f"w{i}", f"127.0.0.1:{9000 + i}") for i in range(12)),
            secrets.token_bytes(32),
            shard_size=2,
        )
        before = Placement(pool).shard("acme")
        after = Placement(pool, {"acme": cfg}).shard("acme")
        assert len(after) == 6 and after[:2] == before

        # The reporter dies: its report goes with its lease; the shard shrinks after the
        # cool-down and the drain delay.
        await lease.revoke()
        clock.t += POLICY.cooldown_s
        (announced,) = await loop.tick()
        assert announced.shard_size == 6
        clock.t += POLICY.drain_s
        (shrunk,) = await loop.tick()
        assert shrunk.shard_size == 0
        kv = await store.get(tenant_key("acme"))
        assert kv is not None and TenantConfig.decode(kv.value).shard_size == 0
