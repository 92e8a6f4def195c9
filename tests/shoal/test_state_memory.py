"""MemoryStore keeps etcd's semantics (it stands in for etcd in unit tests of pure logic)."""

from __future__ import annotations

import asyncio

import pytest

from shoal.state import Conflict, MemoryStore, cas_put, prefix_end, read_prefix


def test_prefix_end() -> None:
    assert prefix_end("/a/") == "/a0"
    assert prefix_end("ab") == "ac"
    assert prefix_end("") == "\x00"


async def test_memory_store_cas_range_and_leases() -> None:
    clock = [0.0]
    s = MemoryStore(now=lambda: clock[0])
    await cas_put(s, "/m/a", b"1", 0)
    with pytest.raises(Conflict):
        await cas_put(s, "/m/a", b"2", 0)
    for i in range(5):
        await s.put(f"/m/k{i}", b"v")
    kvs, _ = await read_prefix(s, "/m/k", page_size=2)
    assert [kv.key for kv in kvs] == [f"/m/k{i}" for i in range(5)]
    lease = await s.grant_lease(5)
    await s.put("/m/leased", b"x", lease=lease.id)
    clock[0] = 4.0
    s.expire_leases()
    assert await s.get("/m/leased") is not None
    clock[0] = 5.0
    s.expire_leases()
    assert await s.get("/m/leased") is None and lease.lost.is_set()


async def test_memory_watch_replays_then_follows() -> None:
    s = MemoryStore()
    rev = await s.put("/w/a", b"1")
    watch = await s.watch("/w/", rev)
    await s.put("/w/b", b"2")
    seen = []

    async def take() -> None:
        async for ev in watch:
            seen.append(ev.key)
            if len(seen) == 2:
                return

    await asyncio.wait_for(take(), 1)
    assert seen == ["/w/a", "/w/b"]
