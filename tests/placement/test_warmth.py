"""Warm hand-off and pins, the leader's half: the pure plans, and the publisher holding a
leaving worker until its takers acknowledge (on MemoryStore: the etcd path and real workers
are in tests/e2e/test_handoff.py)."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable

from placement.election import LeaderElection
from placement.publisher import SnapshotPublisher
from placement.warmth import WarmPlanner, plan_moves, plan_pins, warm_mirrors
from shoal.records import Member, PoolSnapshot, WorkerInfo, placement_key, worker_key
from shoal.shard import Placement, Pool, primary_index
from shoal.state import MemoryStore
from shoal.warmth import HotList, HotModel, Pin, WarmOrder, hot_key, pin_key, warm_key

SALT = bytes(range(32))
IDS = ("w0", "w1", "w2", "w3", "w4")


def members(ids: tuple[str, ...] | list[str]) -> tuple[Member, ...]:
    return tuple(Member(w, f"h:{w}") for w in sorted(ids))


def placement(ids: tuple[str, ...] | list[str], k: int = 2) -> Placement:
    return Placement(Pool(members(ids), SALT, k))


def primary(p: Placement, m: HotModel) -> str:
    ms, k = p.ranked(m.tenant)
    return ms[primary_index(m.key, k)].worker_id


def hot_of(p: Placement, wid: str, n: int = 40, nbytes: int = 100) -> HotList:
    """``wid``'s hot list: models it is the primary of, scores falling."""
    out: list[HotModel] = []
    t = 0
    while len(out) < n:
        m = HotModel(f"t{t}", "m", 1, nbytes, score=15 - len(out) % 16)
        if primary(p, m) == wid:
            out.append(m)
        t += 1
    return HotList(wid, tuple(out))


def test_a_leavers_hot_models_go_to_their_new_primaries_and_nowhere_else() -> None:
    old, new = placement(IDS), placement([w for w in IDS if w != "w0"])
    hot = hot_of(old, "w0")
    moves = plan_moves(old, new, [hot], dict.fromkeys(IDS, 1 << 30))
    assert "w0" not in moves
    ordered = [(to, m) for to, ms in moves.items() for m in ms]
    assert sorted(m.ref for _, m in ordered) == sorted(m.ref for m in hot.models)
    assert all(primary(new, m) == to for to, m in ordered)
    for ms in moves.values():  # hottest first
        assert [m.score for m in ms] == sorted((m.score for m in ms), reverse=True)


def test_models_already_hot_on_their_new_primary_are_not_ordered() -> None:
    old, new = placement(IDS), placement([w for w in IDS if w != "w0"])
    hot = hot_of(old, "w0")
    taker = primary(new, hot.models[0])
    also = HotList(taker, (hot.models[0],))
    moves = plan_moves(old, new, [hot, also], dict.fromkeys(IDS, 1 << 30))
    assert hot.models[0].ref not in {m.ref for m in moves.get(taker, [])}


def test_orders_stop_at_the_preload_share_of_the_takers_budget() -> None:
    old, new = placement(IDS), placement([w for w in IDS if w != "w0"])
    hot = hot_of(old, "w0", n=60, nbytes=100)
    moves = plan_moves(old, new, [hot], dict.fromkeys(IDS, 1000), preload_fraction=0.5)
    for to, ms in moves.items():
        assert sum(m.nbytes for m in ms) <= 500
        full = [m for m in hot.models if primary(new, m) == to]
        # The cut keeps the hottest: nothing left out is hotter than what was kept.
        left_out = [m for m in full if m.ref not in {x.ref for x in ms}]
        assert not left_out or max(m.score for m in left_out) <= min(m.score for m in ms)


def test_a_joiner_is_ordered_what_it_becomes_primary_for() -> None:
    old, new = placement(IDS[:4]), placement(IDS)
    lists = [hot_of(old, w, n=30) for w in IDS[:4]]
    moves = plan_moves(old, new, lists, dict.fromkeys(IDS, 1 << 30))
    expected = sorted(m.ref for hl in lists for m in hl.models if primary(new, m) == "w4")
    assert expected and sorted(m.ref for m in moves["w4"]) == expected


def test_pins_go_to_every_member_of_the_tenants_shard() -> None:
    p = placement(IDS, k=3)
    pins = [Pin("acme", "churn", "cpu"), Pin("beta", "fraud", "cpu")]
    out = plan_pins(p, pins)
    for pin in pins:
        for m in p.shard(pin.tenant):
            assert (pin.tenant, pin.name) in out[m.worker_id]
    assert sum(len(v) for v in out.values()) == 6


# --- the leader's loop on MemoryStore --------------------------------------------------------


async def _eventually(check: Callable[[], bool | Awaitable[bool]], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        ok = check()
        if await ok if inspect.isawaitable(ok) else ok:
            return
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def info(wid: str, **kw: object) -> WorkerInfo:
    return WorkerInfo(wid, "cpu", f"h:{wid}", host_budget=1 << 30, **kw)  # type: ignore[arg-type]


async def _members(store: MemoryStore) -> list[str]:
    kv = await store.get(placement_key("cpu"))
    return [m.worker_id for m in PoolSnapshot.decode(kv.value).members] if kv else []


async def _order(store: MemoryStore, wid: str) -> WarmOrder | None:
    kv = await store.get(warm_key("cpu", wid))
    return WarmOrder.decode(kv.value) if kv is not None else None


class Leader:
    """A publisher with its planner, leading on a MemoryStore."""

    def __init__(self, store: MemoryStore, wait_s: float) -> None:
        self.store, self.wait_s = store, wait_s

    async def __aenter__(self) -> Leader:
        election = LeaderElection(self.store, "leader")
        await election.campaign()
        assert election.fence is not None
        self.mirrors = warm_mirrors(self.store)
        for m in self.mirrors:
            await m.start()
        self.planner = WarmPlanner(
            self.store, election.fence, SALT, 2, *self.mirrors, wait_s=self.wait_s
        )
        pub = SnapshotPublisher(self.store, election.fence, 2, 0.05, planner=self.planner)
        self.task = asyncio.create_task(pub.run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.task.cancel()
        for m in self.mirrors:
            await m.stop()


async def _pool(store: MemoryStore, ids: tuple[str, ...]) -> None:
    for w in ids:
        await store.put(worker_key("cpu", w), info(w, ready=True).encode())
    await store.put("/shoal/cluster", b'{"salt": "' + SALT.hex().encode() + b'"}')


async def test_a_leaving_worker_stays_a_member_until_its_takers_acknowledge() -> None:
    store = MemoryStore()
    await _pool(store, IDS)
    async with Leader(store, wait_s=30.0):
        await _eventually(lambda: _has(store, set(IDS)))
        hot = hot_of(placement(IDS), "w0", n=20)
        await store.put(hot_key("cpu", "w0"), hot.encode())
        await asyncio.sleep(0.1)
        await store.put(worker_key("cpu", "w0"), info("w0", ready=True, leaving=True).encode())
        takers = {primary(placement(IDS[1:]), m) for m in hot.models}
        orders: dict[str, WarmOrder] = {}

        async def all_ordered() -> bool:
            for t in takers:
                o = await _order(store, t)
                if o is not None and o.preload:
                    orders[t] = o
            return set(orders) == takers

        await _eventually(all_ordered)
        ordered = sorted(m.ref for o in orders.values() for m in o.preload)
        assert ordered == sorted(m.ref for m in hot.models)
        assert all(o.reason == "hand-off from w0" for o in orders.values())
        await asyncio.sleep(0.3)  # well past the debounce: still held
        assert "w0" in await _members(store)
        for t, o in orders.items():  # the takers preloaded: each says so
            await store.put(worker_key("cpu", t), info(t, ready=True, warmed=o.id).encode())
        await _eventually(lambda: _lacks(store, "w0"))
        assert sorted(await _members(store)) == list(IDS[1:])


async def test_a_hold_lapses_after_the_wait_when_takers_never_answer() -> None:
    store = MemoryStore()
    await _pool(store, IDS)
    async with Leader(store, wait_s=0.5):
        await _eventually(lambda: _has(store, set(IDS)))
        await store.put(hot_key("cpu", "w0"), hot_of(placement(IDS), "w0", n=10).encode())
        await asyncio.sleep(0.1)
        t0 = asyncio.get_running_loop().time()
        await store.put(worker_key("cpu", "w0"), info("w0", ready=True, leaving=True).encode())
        await asyncio.sleep(0.25)
        assert "w0" in await _members(store)  # held, nobody acknowledged
        await _eventually(lambda: _lacks(store, "w0"))
        assert asyncio.get_running_loop().time() - t0 >= 0.5


async def test_a_joiner_gets_an_order_and_enters_once_ready() -> None:
    store = MemoryStore()
    await _pool(store, IDS[:4])
    async with Leader(store, wait_s=5.0):
        await _eventually(lambda: _has(store, set(IDS[:4])))
        lists = [hot_of(placement(IDS[:4]), w, n=15) for w in IDS[:4]]
        for hl in lists:
            await store.put(hot_key("cpu", hl.worker_id), hl.encode())
        await store.put(pin_key("acme", "churn"), Pin("acme", "churn", "cpu").encode())
        await asyncio.sleep(0.1)
        await store.put(worker_key("cpu", "w4"), info("w4", ready=False).encode())
        await _eventually(lambda: _order_for(store, "w4"))
        order = await _order(store, "w4")
        assert order is not None and order.reason == "join"
        grown = placement(IDS)
        expected = sorted(m.ref for hl in lists for m in hl.models if primary(grown, m) == "w4")
        assert sorted(m.ref for m in order.preload) == expected
        in_shard = "w4" in {m.worker_id for m in grown.shard("acme")}
        assert (("acme", "churn") in order.pinned) == in_shard
        assert "w4" not in await _members(store)
        # Primaries move on the other members too (the joiner takes positions in shards):
        # they are ordered to preload as well, and the joiner stays out until all have.
        others = {w: o for w in IDS[:4] if (o := await _order(store, w)) is not None}
        moved = sorted(m.ref for hl in lists for m in hl.models
                       if primary(grown, m) not in ("w4", hl.worker_id))  # fmt: skip
        assert sorted(m.ref for o in others.values() for m in o.preload) == moved
        assert all(o.reason == "join of w4" for o in others.values() if o.preload)
        await store.put(worker_key("cpu", "w4"), info("w4", ready=True, warmed=order.id).encode())
        await asyncio.sleep(0.3)
        assert moved and "w4" not in await _members(store)
        for w, o in others.items():
            await store.put(worker_key("cpu", w), info(w, ready=True, warmed=o.id).encode())
        await _eventually(lambda: _has(store, set(IDS)))


async def test_a_pin_orders_every_shard_member_to_hold_it() -> None:
    store = MemoryStore()
    await _pool(store, IDS)
    async with Leader(store, wait_s=5.0):
        await _eventually(lambda: _has(store, set(IDS)))
        await store.put(pin_key("acme", "churn"), Pin("acme", "churn", "cpu").encode())
        shard = {m.worker_id for m in placement(IDS).shard("acme")}

        async def pinned() -> bool:
            got = set()
            for w in IDS:
                o = await _order(store, w)
                if o is not None and ("acme", "churn") in o.pinned:
                    got.add(w)
            return got == shard

        await _eventually(pinned)
        await store.delete(pin_key("acme", "churn"))

        async def unpinned() -> bool:
            orders = [await _order(store, w) for w in shard]
            return all(o is None or not o.pinned for o in orders)

        await _eventually(unpinned)


async def _has(store: MemoryStore, ids: set[str]) -> bool:
    return set(await _members(store)) == ids


async def _lacks(store: MemoryStore, wid: str) -> bool:
    ms = await _members(store)
    return bool(ms) and wid not in ms


async def _order_for(store: MemoryStore, wid: str) -> bool:
    return await _order(store, wid) is not None
