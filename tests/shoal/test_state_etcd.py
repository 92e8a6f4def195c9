"""The etcd StateStore against a real etcd server."""

from __future__ import annotations

import asyncio

import pytest

from shoal.devservers import LocalEtcd
from shoal.etcd import EtcdStore
from shoal.state import (
    Compare,
    Conflict,
    Delete,
    Put,
    StateUnavailable,
    WatchEvent,
    batch_write,
    cas_put,
    read_prefix,
)


async def test_put_get_delete(etcd_url: str) -> None:
    async with EtcdStore(etcd_url) as s:
        rev = await s.put("/t/a", b"1")
        kv = await s.get("/t/a")
        assert kv is not None and kv.value == b"1" and kv.mod_revision == rev
        assert await s.get("/t/missing") is None
        assert await s.delete("/t/a") == 1
        assert await s.get("/t/a") is None
        assert await s.delete("/t/a") == 0


async def test_range_is_paginated_and_consistent(etcd_url: str) -> None:
    async with EtcdStore(etcd_url) as s:
        for i in range(25):
            await s.put(f"/t/k{i:03d}", str(i).encode())
        await s.put("/u/outside", b"x")
        page = await s.range("/t/", limit=10)
        assert len(page.kvs) == 10 and page.more
        kvs, rev = await read_prefix(s, "/t/", page_size=7)
        assert [kv.key for kv in kvs] == [f"/t/k{i:03d}" for i in range(25)]
        # A write after the read does not leak into a page read at the old revision.
        await s.put("/t/k000a", b"new")
        old = await s.range("/t/", limit=100, revision=rev)
        assert "/t/k000a" not in {kv.key for kv in old.kvs}
        assert await s.delete("/t/", prefix=True) == 26


async def test_cas_conflict(etcd_url: str) -> None:
    async with EtcdStore(etcd_url) as s:
        await cas_put(s, "/t/m", b"v1", 0)  # create only if absent
        with pytest.raises(Conflict):
            await cas_put(s, "/t/m", b"again", 0)
        kv = await s.get("/t/m")
        assert kv is not None
        await cas_put(s, "/t/m", b"v2", kv.mod_revision)
        with pytest.raises(Conflict):
            await cas_put(s, "/t/m", b"v3", kv.mod_revision)  # stale revision loses
        final = await s.get("/t/m")
        assert final is not None and final.value == b"v2"


async def test_txn_is_atomic_and_batches_respect_limit(etcd_url: str) -> None:
    async with EtcdStore(etcd_url) as s:
        res = await s.txn([Compare("/t/x", 0)], [Put("/t/x", b"1"), Put("/t/y", b"2")])
        assert res.succeeded
        res = await s.txn([Compare("/t/x", 0)], [Put("/t/z", b"3")])
        assert not res.succeeded and await s.get("/t/z") is None
        ops = [Put(f"/t/b{i:04d}", b"v") for i in range(300)]  # > etcd's 128 ops per txn
        await batch_write(s, ops)
        kvs, _ = await read_prefix(s, "/t/b")
        assert len(kvs) == 300
        await s.txn([], [Delete("/t/b", prefix=True)])
        assert (await s.range("/t/b")).kvs == []


async def test_watch_from_revision_sees_history_and_new_events(etcd_url: str) -> None:
    async with EtcdStore(etcd_url) as s:
        rev = await s.put("/w/a", b"1")
        await s.put("/other", b"x")
        events: list[WatchEvent] = []
        watch = await s.watch("/w/", rev)

        async def collect() -> None:
            async for ev in watch:
                events.append(ev)
                if len(events) == 3:
                    return

        task = asyncio.create_task(collect())
        await s.put("/w/b", b"2")
        await s.delete("/w/a")
        await asyncio.wait_for(task, 10)
        await watch.cancel()
        assert [(e.kind, e.key) for e in events] == [
            ("put", "/w/a"),
            ("put", "/w/b"),
            ("delete", "/w/a"),
        ]


async def test_lease_keepalive_and_expiry(etcd_url: str) -> None:
    async with EtcdStore(etcd_url) as s:
        kept = await s.grant_lease(1)
        await s.put("/l/kept", b"1", lease=kept.id)
        dropped = await s.grant_lease(1)
        await s.put("/l/dropped", b"1", lease=dropped.id)
        watch = await s.watch("/l/dropped", await s.put("/l/marker", b""))
        dropped.stop()  # no more keep-alives: etcd expires it after its TTL

        async def deleted() -> WatchEvent:
            async for ev in watch:
                if ev.kind == "delete":
                    return ev
            raise AssertionError("watch ended")

        await asyncio.wait_for(deleted(), 15)
        await watch.cancel()
        assert await s.get("/l/dropped") is None
        assert await s.get("/l/kept") is not None  # renewed in the background
        assert not kept.lost.is_set()
        await kept.revoke()
        assert await s.get("/l/kept") is None


async def test_unreachable_etcd_raises_unavailable(tmp_path: pytest.TempPathFactory) -> None:
    server = LocalEtcd(tmp_path / "e")  # type: ignore[operator]
    server.start()
    store = await EtcdStore(server.url, timeout=1.0).connect()
    await store.put("/x", b"1")
    server.stop()
    try:
        with pytest.raises(StateUnavailable):
            await store.get("/x")
    finally:
        await store.close()
