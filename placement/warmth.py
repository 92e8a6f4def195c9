"""Warm hand-off and pinning, the leader's half: who preloads what before membership changes.

Inputs (kept current by mirrors while leading): every worker's hot list (``/shoal/hot/``),
the pins (``/shoal/pins/``), tenant overrides (``/shoal/tenants/``), and from the snapshot
publisher the worker records and the published snapshots. Output: one ``WarmOrder`` per
worker (``/shoal/warm/<pool>/<id>``, fenced like every leader write) and a *hold* on leaving
workers.

Planning (``plan_moves``, pure): for a membership change ``old -> new`` of a pool, every hot
model of every hot list whose primary (``shoal.shard``: member ``hash(key) mod k`` of the
tenant's shard) is a different worker under ``new`` than under ``old``, and is not already on
the new primary's own hot list, is ordered to that new primary; each worker's orders are
hottest first and cut at ``preload_fraction`` of its host budget (a joiner, empty, at all of
it: what it preloads displaces nothing). Pinned models go to every
member of their tenant's shard under ``new``.

Events:

* a worker says ``leaving`` (SIGTERM, or ``shoal workers drain``): plan ``members ->
  members - leaving``; the leaver stays a member (``held``) until every worker given a
  preload has acknowledged it (``WorkerInfo.warmed`` >= the order's id), or ``wait_s``
  passed, or a taker left; then the publisher drops it, in one epoch;
* a worker registers not ready (it waits for its order before it says ready): plan
  ``members -> members + it``; its order holds what it becomes primary for, and its pins;
* pins or membership change: every member's ``pinned`` list is recomputed; orders are written
  only when they change.

A new leader starts from the records as they are: a leaving worker's hold starts again (its
``wait_s`` bounds it once more), and order ids continue above the old ones (milliseconds).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from placement.election import NotLeader
from shoal.mirror import PrefixMirror
from shoal.records import TENANTS, Member, PoolSnapshot, TenantConfig, WorkerInfo
from shoal.shard import Placement, Pool, primary_index
from shoal.state import Compare, Put, StateStore
from shoal.warmth import HOT, PINS, HotList, HotModel, Pin, WarmOrder, warm_key

log = logging.getLogger(__name__)


def _primary(placement: Placement, m: HotModel) -> str:
    members, k = placement.ranked(m.tenant)
    if not members or k <= 0:
        return ""
    return members[primary_index(m.key, k)].worker_id


def plan_moves(
    old: Placement | None,
    new: Placement,
    hot_lists: Iterable[HotList],
    budgets: Mapping[str, int],
    preload_fraction: float = 0.5,
    empty: str = "",
) -> dict[str, list[HotModel]]:
    """worker id -> hot models to preload, hottest first (see the module docstring). The
    ``empty`` worker (a joiner: nothing resident to displace) may fill its whole budget."""
    lists = list(hot_lists)
    holding = {hl.worker_id: {m.ref for m in hl.models} for hl in lists}
    best: dict[tuple[str, tuple[str, str, int]], HotModel] = {}
    for hl in lists:
        for m in hl.models:
            to = _primary(new, m)
            if not to or m.ref in holding.get(to, ()):
                continue
            if old is not None and _primary(old, m) == to:
                continue
            seen = best.get((to, m.ref))
            if seen is None or m.score > seen.score:
                best[(to, m.ref)] = m
    per: dict[str, list[HotModel]] = {}
    for (to, _ref), m in best.items():
        per.setdefault(to, []).append(m)
    out: dict[str, list[HotModel]] = {}
    for to, models in per.items():
        models.sort(key=lambda m: (-m.score, m.tenant, m.name, m.version))
        room = int(budgets.get(to, 0) * (1.0 if to == empty else preload_fraction))
        kept, used = [], 0
        for m in models:
            if used + m.nbytes > room:
                continue
            kept.append(m)
            used += m.nbytes
        if kept:
            out[to] = kept
    return out


def plan_pins(placement: Placement, pins: Iterable[Pin]) -> dict[str, list[tuple[str, str]]]:
    """worker id -> the pinned models (tenant, name) whose shard includes it, sorted."""
    out: dict[str, list[tuple[str, str]]] = {}
    for p in pins:
        for member in placement.shard(p.tenant):
            out.setdefault(member.worker_id, []).append((p.tenant, p.name))
    return {w: sorted(ps) for w, ps in out.items()}


def warm_mirrors(
    store: StateStore,
) -> tuple[PrefixMirror[HotList], PrefixMirror[Pin], PrefixMirror[TenantConfig]]:
    """The planner's inputs besides worker records: hot lists, pins, tenant overrides."""
    return (
        PrefixMirror(store, HOT, lambda _k, v, _r: HotList.decode(v)),
        PrefixMirror(store, PINS, lambda _k, v, _r: Pin.decode(v)),
        PrefixMirror(store, TENANTS, lambda _k, v, _r: TenantConfig.decode(v)),
    )


@dataclass
class _Hold:
    """A membership change held back until the takers acknowledged their orders: a leaving
    worker kept in the snapshot (``leave``), or a joining one kept out (``join``)."""

    kind: str  # "leave" | "join"
    until: float  # monotonic
    orders: dict[str, int] = field(default_factory=dict)  # taker -> order id


class WarmPlanner:
    """The leader's hand-off state (see the module docstring); ``step`` after every change
    the publisher sees, ``held`` from the membership tracker."""

    def __init__(
        self,
        store: StateStore,
        fence: Compare,
        salt: bytes,
        shard_size: int,
        hot: PrefixMirror[HotList],
        pins: PrefixMirror[Pin],
        tenants: PrefixMirror[TenantConfig],
        wait_s: float = 10.0,
        preload_fraction: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
        on_order: Callable[[str, WarmOrder], None] | None = None,
    ) -> None:
        self._store = store
        self._fence = fence
        self._salt = salt
        self._shard_size = shard_size
        self._hot, self._pins, self._tenants = hot, pins, tenants
        self.wait_s = wait_s
        self.preload_fraction = preload_fraction
        self._clock = clock
        self._on_order = on_order
        self._next_id = int(time.time() * 1000)
        self.orders: dict[tuple[str, str], WarmOrder] = {}  # (pool, worker) -> last written
        self.holds: dict[tuple[str, str], _Hold] = {}
        self._joins: dict[tuple[str, str], float] = {}  # (pool, worker) -> started_at planned

    # --- the tracker's view ---------------------------------------------------------------

    def keep(self, info: WorkerInfo) -> bool | None:
        """A held worker's membership for now: a leaver stays in (True), a joiner stays out
        (False) until its takers have preloaded; None: no hand-off holds it."""
        hold = self.holds.get((info.pool, info.worker_id))
        if hold is None or not hold.orders or self._clock() >= hold.until:
            return None
        return hold.kind == "leave"

    def holding(self) -> bool:
        """Whether a hand-off is under way (the planner must look at the clock)."""
        return any(h.orders for h in self.holds.values())

    def deadline(self) -> float | None:
        """The earliest monotonic time a hold lapses (the publisher looks again then)."""
        now = self._clock()
        live = [h.until for h in self.holds.values() if h.orders and h.until > now]
        return min(live) if live else None

    def generation(self) -> tuple[int, int, int]:
        """Changes of what planning reads besides the worker records."""
        return (self._hot.changes, self._pins.changes, self._tenants.changes)

    # --- planning -------------------------------------------------------------------------

    def _placement(self, pool: str, members: Iterable[Member]) -> Placement:
        ms = tuple(sorted(members, key=lambda m: m.worker_id))
        overrides = {c.tenant: c for c in self._tenants.items.values()}
        return Placement(Pool(ms, self._salt, self._shard_size), overrides)

    def _pool_hot(self, pool: str) -> list[HotList]:
        prefix = f"{self._hot.prefix}{pool}/"
        return [hl for k, hl in self._hot.items.items() if k.startswith(prefix)]

    def _pool_pins(self, pool: str) -> list[Pin]:
        return [p for p in self._pins.items.values() if p.pool == pool]

    async def step(
        self, workers: Mapping[str, WorkerInfo], published: Mapping[str, PoolSnapshot]
    ) -> bool:
        """Plan what changed since the last step and write the orders that changed; True when
        a hold ended (a leaver may leave the snapshot now)."""
        by_pool: dict[str, dict[str, WorkerInfo]] = {}
        for info in workers.values():
            by_pool.setdefault(info.pool, {})[info.worker_id] = info
        for key in [k for k in self.holds if k[1] not in by_pool.get(k[0], {})]:
            del self.holds[key]  # the leaver is gone
        for key in [k for k in self.orders if k[1] not in by_pool.get(k[0], {})]:
            del self.orders[key]  # gone: a worker of that id starts from a fresh order
        ended = False
        for pool in sorted(by_pool):
            ended |= await self._step_pool(pool, by_pool[pool], published.get(pool))
        return ended

    async def _step_pool(
        self, pool: str, infos: Mapping[str, WorkerInfo], snap: PoolSnapshot | None
    ) -> bool:
        members = {m.worker_id: m for m in (snap.members if snap is not None else ())}
        current = self._placement(pool, members.values())
        preload: dict[str, list[HotModel]] = {}
        reason: dict[str, str] = {}
        budgets = {w: i.host_budget for w, i in infos.items()}
        for wid, info in sorted(infos.items()):
            key = (pool, wid)
            hold = self.holds.get(key)
            if info.leaving and wid in members and (hold is None or hold.kind != "leave"):
                rest = [m for w, m in members.items() if w != wid]
                moves = plan_moves(current, self._placement(pool, rest), self._pool_hot(pool),
                                   budgets, self.preload_fraction)  # fmt: skip
                moves.pop(wid, None)
                self._hold(key, "leave", moves, preload, reason, f"hand-off from {wid}")
                log.info("%s is leaving pool %s: %d workers preload %d models first", wid, pool,
                         len(moves), sum(len(v) for v in moves.values()))  # fmt: skip
            if info.ready or info.leaving:
                self._joins.pop(key, None)  # a later join (after an undrain) is planned anew
            joining = not info.ready and not info.draining and not info.leaving
            if joining and wid not in members and self._joins.get(key) != info.started_at:
                self._joins[key] = info.started_at
                member = Member(wid, info.address, info.zone)
                grown = self._placement(pool, [*members.values(), member])
                moves = plan_moves(current, grown, self._pool_hot(pool), budgets,
                                   self.preload_fraction, empty=wid)  # fmt: skip
                moves.setdefault(wid, [])  # the joiner always gets an order: it waits for one
                self._hold(key, "join", moves, preload, reason, f"join of {wid}")
                reason[wid] = "join"
                log.info("%s is joining pool %s: it preloads %d models, %d others %d first", wid,
                         pool, len(moves[wid]), len(moves) - 1,
                         sum(len(v) for w, v in moves.items() if w != wid))  # fmt: skip
        joiners = [Member(w, i.address, i.zone) for w, i in infos.items()
                   if not i.ready and not i.draining and w not in members]  # fmt: skip
        pinned = plan_pins(self._placement(pool, [*members.values(), *joiners]),
                           self._pool_pins(pool))  # fmt: skip
        for wid in sorted(infos):
            await self._order(pool, wid, preload.get(wid), pinned.get(wid, []), reason.get(wid))
        return self._settle(pool, infos)

    def _hold(
        self,
        key: tuple[str, str],
        kind: str,
        moves: dict[str, list[HotModel]],
        preload: dict[str, list[HotModel]],
        reason: dict[str, str],
        why: str,
    ) -> None:
        hold = self.holds[key] = _Hold(kind, self._clock() + self.wait_s)
        for to, models in moves.items():
            preload.setdefault(to, []).extend(models)
            reason[to] = why
            hold.orders[to] = 0  # the id is set once the order is written

    async def _order(
        self,
        pool: str,
        wid: str,
        preload: list[HotModel] | None,
        pinned: list[tuple[str, str]],
        reason: str | None,
    ) -> None:
        key = (pool, wid)
        old = self.orders.get(key)
        if preload is None and old is not None and old.pinned == tuple(pinned):
            return
        if preload is None and old is None and not pinned:
            return
        if preload is None:
            preload = []
        if old is not None and old.preload:  # not yet acknowledged: keep asking for it
            have = {m.ref for m in preload}
            preload = [*preload, *(m for m in old.preload if m.ref not in have)]
        self._next_id = max(self._next_id + 1, int(time.time() * 1000))
        order = WarmOrder(self._next_id, tuple(preload), tuple(pinned), reason or "pins")
        res = await self._store.txn([self._fence], [Put(warm_key(pool, wid), order.encode())])
        if not res.succeeded:
            raise NotLeader("the election key changed: another instance leads")
        self.orders[key] = order
        for (hpool, _leaver), hold in self.holds.items():
            if hpool == pool and wid in hold.orders and hold.orders[wid] == 0:
                hold.orders[wid] = order.id
        if self._on_order is not None:
            self._on_order(wid, order)

    def _settle(self, pool: str, infos: Mapping[str, WorkerInfo]) -> bool:
        """Forget acknowledged preloads; end the holds whose takers are all done or whose
        wait passed. True when a hold ended (the snapshot must be looked at again)."""
        for wid, info in infos.items():
            order = self.orders.get((pool, wid))
            if order is not None and order.preload and info.warmed >= order.id:
                self.orders[(pool, wid)] = WarmOrder(order.id, (), order.pinned, order.reason)
        ended = False
        for (hpool, leaver), hold in list(self.holds.items()):
            if hpool != pool:
                continue
            for taker, oid in list(hold.orders.items()):
                t = infos.get(taker)
                if t is None or t.leaving or t.draining or t.warmed >= oid > 0:
                    del hold.orders[taker]
            if hold.orders and self._clock() >= hold.until:
                log.warning("%s (pool %s): %d takers did not preload within %.1fs; it %s "
                            "anyway", leaver, pool, len(hold.orders), self.wait_s,
                            "leaves" if hold.kind == "leave" else "enters")  # fmt: skip
                hold.orders.clear()
            if not hold.orders and hold.until > 0:
                log.info("%s (pool %s): its takers are warm; it %s the snapshot", leaver, pool,
                         "leaves" if hold.kind == "leave" else "enters")  # fmt: skip
                hold.until = 0.0  # done: stays in self.holds so it is not planned again
                ended = True
        return ended
