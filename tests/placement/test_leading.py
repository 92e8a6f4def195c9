"""The leader's outer loop: whatever ends a term (a failed loop, a bug, etcd out as a term
begins), the instance steps down and a candidate leads again; no term ends with the key held
and nothing running. On MemoryStore (pure logic: the election's etcd path is in
test_service.py)."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable

from placement.election import LeaderElection, lead_forever
from placement.hot import HotPolicy, HotTenantController, HotTenantLoop
from shoal.records import ELECTION, LoadReport, TenantConfig, load_key, tenant_key
from shoal.state import Compare, MemoryStore

POLICY = HotPolicy(threshold=100.0, base_shard=2, max_shard=6, cooldown_s=60.0, drain_s=30.0)


async def _eventually(check: Callable[[], bool | Awaitable[bool]], timeout: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        ok = check()
        if await ok if inspect.isawaitable(ok) else ok:
            return
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def _holder(store: MemoryStore) -> str:
    kv = await store.get(ELECTION)
    return kv.value.decode() if kv is not None else ""


async def test_a_leader_whose_loop_fails_steps_down_and_the_standby_leads() -> None:
    store = MemoryStore()
    a, b = LeaderElection(store, "a"), LeaderElection(store, "b")
    terms: list[str] = []
    changes: list[tuple[str, bool]] = []
    forever = asyncio.Event()

    def lead(name: str) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            terms.append(name)
            if name == "a" and terms.count("a") == 1:
                raise KeyError("a bug in a leader's loop")  # not an etcd error
            await forever.wait()

        return run

    ta = asyncio.create_task(
        lead_forever(a, lead("a"), lambda on: changes.append(("a", on)), pause_s=0.2)
    )
    await _eventually(lambda: terms == ["a"], 5)
    tb = asyncio.create_task(
        lead_forever(b, lead("b"), lambda on: changes.append(("b", on)), pause_s=0.2)
    )
    try:
        await _eventually(lambda: "b" in terms, 5)
        assert terms == ["a", "b"]  # a's failed term ended; b, waiting, took the key
        assert await _holder(store) == "b" and b.leading and not a.leading
        assert changes == [("a", True), ("a", False), ("b", True)]
        assert not ta.done()  # a campaigns again, as a standby
    finally:
        for t in (ta, tb):
            t.cancel()
        await asyncio.gather(ta, tb, return_exceptions=True)


async def test_a_lone_instance_leads_again_after_its_term_fails() -> None:
    store = MemoryStore()
    a = LeaderElection(store, "a")
    terms = 0
    forever = asyncio.Event()

    async def lead() -> None:
        nonlocal terms
        terms += 1
        if terms < 3:
            raise RuntimeError(f"term {terms} failed")
        await forever.wait()

    task = asyncio.create_task(lead_forever(a, lead, pause_s=0.01))
    try:
        await _eventually(lambda: terms == 3, 5)
        assert await _holder(store) == "a" and a.leading
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_hot_loop_adopts_once_etcd_answers() -> None:
    """etcd out as a term begins: the loop waits for it instead of ending the term."""
    store = MemoryStore()
    fence = Compare(ELECTION, await store.put(ELECTION, b"me"))
    await store.put(tenant_key("acme"), TenantConfig("acme", key_hashes=("h1",)).encode())
    await store.put(load_key("r1"), LoadReport("r1", {"acme": 500.0}).encode())
    store.available = False
    loop = HotTenantLoop(store, HotTenantController(POLICY, lambda: 1000.0), fence, 0.01)
    task = asyncio.create_task(loop.run())
    try:
        await asyncio.sleep(0.1)
        assert not task.done()
        store.available = True

        async def grown() -> bool:
            kv = await store.get(tenant_key("acme"))
            return kv is not None and TenantConfig.decode(kv.value).shard_size == 6

        await _eventually(grown, 5)
        kv = await store.get(tenant_key("acme"))
        assert kv is not None and TenantConfig.decode(kv.value).key_hashes == ("h1",)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
