"""Warm hand-off and pinning, the worker's half (the leader's is ``placement.warmth``).

* **Hot list**: every ``hot_list_s`` the worker writes its ``hot_list_size`` hottest resident
  versions (the cache policy's recent request counts, then recency) to
  ``/shoal/hot/<pool>/<id>`` under its lease, when the list changed.
* **Orders**: the worker follows ``/shoal/warm/<pool>/<id>`` and applies the latest order:
  it keeps the pinned models' default-route versions resident (loaded, and held by a
  reference the cache never displaces), releases pins no longer ordered, preloads the listed
  versions hottest first (each credited with its previous worker's count, so admission keeps
  it) and then publishes the order's id as ``warmed``. Preloads and pins are not requests:
  they count in ``shoal_worker_preloads`` / ``shoal_worker_pinned_*``, not in hits and misses.
* **Joining**: a worker whose pool already has members registers *not ready*; the leader
  orders what it becomes primary for; it applies that (bounded by ``handoff_wait_s``), then
  says ready. With no leader, or no members yet, it is ready at once (or when the wait ends).
* **Leaving** (SIGTERM, or ``/shoal/drain/<pool>/<id>`` set by ``shoal workers drain``): it
  publishes its final hot list and ``leaving``, keeps serving, and waits (bounded by
  ``handoff_wait_s``) until the snapshot no longer lists it: the leader publishes that once
  the takers have preloaded. A drained worker stays out, restarts included, until
  ``shoal workers undrain`` deletes the key; it then joins again.
* **Restarting**: a leaving worker keeps its hot list beside its disk tier; back under the
  same id it preloads those models too (from disk), into the room the leader's order left,
  before it says ready (within the same bound).

A pin is refused (logged, ``shoal_worker_pinned_refused``) when it would take pinned bytes
past ``max_pinned_fraction`` of the host budget; ``shoal models pin`` checks the same bound
from the artifact sizes before it writes the pin.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

from shoal.frameworks import Model
from shoal.records import (
    ModelVersion,
    PoolSnapshot,
    UnknownVersion,
    default_route,
    placement_key,
)
from shoal.state import StateError, StateStore, read_prefix
from shoal.tasks import cancel_and_wait_all
from shoal.warmth import HotList, HotModel, WarmOrder, drain_key, hot_key, warm_key
from worker.cache import Entry, Tier
from worker.errors import WorkerError
from worker.types import ModelId

if TYPE_CHECKING:
    from worker.dataplane import Dataplane
    from worker.metrics import WorkerMetrics
    from worker.registration import Registration

log = logging.getLogger(__name__)


async def follow_key(store: StateStore, key: str) -> AsyncIterator[bytes | None]:
    """The value of ``key`` now, then each time it changes (None: absent); survives etcd
    outages by re-reading (a change missed meanwhile is seen then)."""
    delay = 0.2
    last: object = object()
    while True:
        try:
            kvs, rev = await read_prefix(store, key)
            value = next((kv.value for kv in kvs if kv.key == key), None)
            if value != last:
                last = value
                yield value
            watch = await store.watch(key, rev + 1)
            delay = 0.2
            async with watch:
                async for ev in watch:
                    if ev.key != key:
                        continue
                    value = None if ev.kind == "delete" else ev.value
                    if value != last:
                        last = value
                        yield value
        except StateError as exc:
            log.info("watch of %s interrupted (%s); re-reading in %.1fs", key, exc, delay)
        except Exception:  # a bug must not end the watch: it re-reads and goes on
            log.exception("watch of %s failed; re-reading in %.1fs", key, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5.0)


class WarmKeeper:
    """See the module docstring. ``state`` of the record: ``warming``, ``leaving``,
    ``warmed``; the server's ``WorkerInfo`` reads them."""

    def __init__(
        self,
        store: StateStore,
        pool: str,
        worker_id: str,
        dataplane: Dataplane,
        metrics: WorkerMetrics,
        host_budget: int,
        hot_list_size: int = 256,
        hot_list_s: float = 10.0,
        handoff_wait_s: float = 15.0,
        max_pinned_fraction: float = 0.8,
        saved: Path | None = None,
    ) -> None:
        self._store = store
        self.pool = pool
        self.worker_id = worker_id
        self._dp = dataplane
        self._m = metrics
        self._host_budget = host_budget
        self.hot_list_size = hot_list_size
        self.hot_list_s = hot_list_s
        self.handoff_wait_s = handoff_wait_s
        self.max_pinned_fraction = max_pinned_fraction
        #: The hot list as it was when this worker last left, kept beside its disk tier: back
        #: under the same id, it preloads those models too (their artifacts are on disk).
        self.saved = saved
        self.warming = False
        self.leaving = False
        self.drained = False
        self.warmed = 0
        self.pinned: dict[ModelId, Entry[ModelId, Model]] = {}
        self._registration: Registration | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._published: tuple[int, bytes] | None = None
        self._applied = asyncio.Event()  # set after every order applied
        self._membership = asyncio.Event()  # set on every snapshot change

    # --- lifecycle ------------------------------------------------------------------------

    async def prepare(self) -> None:
        """Before registering: forget an order of a previous life, start drained if an
        operator drained this worker, and register not ready if there is a pool to join."""
        try:
            await self._store.delete(warm_key(self.pool, self.worker_id))
            drained = await self._store.get(drain_key(self.pool, self.worker_id))
            snap = await self._store.get(placement_key(self.pool))
        except StateError as exc:
            log.warning("cannot read the pool's state (%s): joining without a warm-up", exc)
            return
        self.drained = self.leaving = drained is not None
        self.warming = not self.drained and snap is not None and self._has_members(snap.value)

    def _has_members(self, snapshot: bytes) -> bool:
        try:
            return any(m.worker_id != self.worker_id for m in PoolSnapshot.decode(snapshot).members)
        except (ValueError, KeyError, TypeError):
            return False

    def start(self, registration: Registration) -> None:
        self._registration = registration
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._orders(), name="warm-orders"),
            loop.create_task(self._hot_loop(), name="hot-list"),
            loop.create_task(self._drains(), name="drain-watch"),
            loop.create_task(self._snapshots(), name="membership-watch"),
        ]
        if self.warming:
            self._tasks.append(loop.create_task(self._join(self.warmed), name="warm-join"))
        elif not self.drained:
            self._tasks.append(loop.create_task(self._preload_saved(), name="warm-saved"))

    async def stop(self) -> None:
        await cancel_and_wait_all(self._tasks)
        self._tasks = []
        for entry in self.pinned.values():
            self._unpin(entry)
        self.pinned.clear()

    # --- joining and leaving --------------------------------------------------------------

    async def _join(self, before: int) -> None:
        """Wait (bounded) until an order newer than ``before`` (the last order applied when
        the not-ready record went out) is applied; then say ready."""
        deadline = asyncio.get_running_loop().time() + self.handoff_wait_s
        try:
            await asyncio.wait_for(self._warmed_past(before), self.handoff_wait_s)
            log.info("joining pool %s warm (order %d)", self.pool, self.warmed)
        except TimeoutError:
            log.warning("no warm-up order within %.1fs: ready without one", self.handoff_wait_s)
        left = deadline - asyncio.get_running_loop().time()
        if left > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._preload_saved(), left)
        self.warming = False
        await self._publish_record()

    async def _warmed_past(self, order_id: int) -> None:
        while self.warmed <= order_id:
            self._applied.clear()
            await self._applied.wait()

    async def leave(self, wait_s: float | None = None) -> bool:
        """Hand over and leave the snapshot (bounded); True when the snapshot dropped it."""
        wait = self.handoff_wait_s if wait_s is None else wait_s
        self.leaving, self.warming = True, False
        self._save()
        await self._publish_hot(draining=True)
        await self._publish_record()
        try:
            await asyncio.wait_for(self._left(), wait)
            return True
        except TimeoutError:
            log.warning("still in the pool's snapshot after %.1fs: leaving anyway", wait)
            return False

    async def _left(self) -> None:
        while True:
            self._membership.clear()
            if not await self._is_member():
                return
            await self._membership.wait()

    async def _is_member(self) -> bool:
        try:
            kv = await self._store.get(placement_key(self.pool))
        except StateError:
            return True
        if kv is None:
            return False
        return any(m.worker_id == self.worker_id for m in PoolSnapshot.decode(kv.value).members)

    async def _snapshots(self) -> None:
        async for _value in follow_key(self._store, placement_key(self.pool)):
            self._membership.set()

    async def _drains(self) -> None:
        try:
            await self._follow_drains()
        except Exception:
            log.exception("the drain watch failed: `shoal workers drain` no longer reaches this")
            raise

    async def _follow_drains(self) -> None:
        async for value in follow_key(self._store, drain_key(self.pool, self.worker_id)):
            if value is not None and not self.drained:
                self.drained = True
                log.info("drain requested: handing over and leaving pool %s", self.pool)
                await self.leave()
            elif value is None and self.drained:
                self.drained = self.leaving = False
                self.warming = True
                log.info("undrained: joining pool %s again", self.pool)
                before = self.warmed  # the order may be applied before publishing returns
                await self._publish_record()
                await self._join(before)

    async def _publish_record(self) -> None:
        if self._registration is not None:
            await self._registration.publish()

    # --- this worker's own hot list, across a restart ---------------------------------------

    def _save(self) -> None:
        if self.saved is None:
            return
        try:
            tmp = self.saved.with_suffix(".tmp")
            tmp.write_bytes(self.hot_list(draining=True).encode())
            tmp.replace(self.saved)
        except OSError as exc:
            log.warning("cannot keep the hot list in %s: %s", self.saved, exc)

    async def _preload_saved(self) -> None:
        """Preload what this worker held hot when it last left (once; into free room only:
        the leader's order and requests already placed come first)."""
        if self.saved is None or not self.saved.exists():
            return
        try:
            hot = HotList.decode(self.saved.read_bytes())
            self.saved.unlink()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring the kept hot list %s: %s", self.saved, exc)
            return
        cache = self._dp.cache
        room = cache.budget(Tier.HOST) - cache.used(Tier.HOST)
        fits = []
        for m in hot.models:
            if ModelId(m.tenant, m.name, m.version) not in cache and m.nbytes <= room:
                fits.append(m)
                room -= m.nbytes
        done = await self._preload(fits)
        log.info("preloaded %d of the %d models hot here when this worker last left", done,
                 len(hot.models))  # fmt: skip

    # --- hot list -------------------------------------------------------------------------

    def hot_list(self, draining: bool = False) -> HotList:
        models = tuple(
            HotModel(e.key.tenant, e.key.name, e.key.version, e.nbytes, score)
            for e, score in self._dp.cache.hottest(self.hot_list_size)
        )
        return HotList(self.worker_id, models, draining)

    async def _publish_hot(self, draining: bool = False) -> None:
        reg = self._registration
        if reg is None or not reg.lease_id:
            return
        value = self.hot_list(draining).encode()
        if self._published == (reg.lease_id, value):
            return
        try:
            await self._store.put(hot_key(self.pool, self.worker_id), value, lease=reg.lease_id)
            self._published = (reg.lease_id, value)
        except StateError as exc:
            log.info("cannot publish the hot list (%s); next time", exc)

    async def _hot_loop(self) -> None:
        while True:
            try:
                if not self.leaving:
                    await self._publish_hot()
            except Exception:  # a bug must not end the loop
                log.exception("publishing the hot list failed")
            await asyncio.sleep(self.hot_list_s)

    # --- orders ---------------------------------------------------------------------------

    async def _orders(self) -> None:
        async for value in follow_key(self._store, warm_key(self.pool, self.worker_id)):
            if value is None:
                continue
            try:
                order = WarmOrder.decode(value)
            except (ValueError, KeyError, TypeError) as exc:
                log.error("undecodable warm order: %s", exc)
                continue
            if order.id <= self.warmed:
                continue
            try:
                await self.apply(order)
            except Exception:  # a bug must not end the order loop
                log.exception("applying warm order %d failed", order.id)
            self.warmed = max(self.warmed, order.id)
            self._applied.set()
            if not self.warming:
                await self._publish_record()

    async def apply(self, order: WarmOrder) -> None:
        """Pins first (they are the guarantee), then preloads hottest first."""
        await self._pin(order.pinned)
        done = await self._preload(order.preload)
        if order.preload:
            log.info("order %d (%s): preloaded %d of %d models", order.id, order.reason, done,
                     len(order.preload))  # fmt: skip

    async def _preload(self, models: tuple[HotModel, ...] | list[HotModel]) -> int:
        """Load ``models`` in order, each admitted as the hot model it was elsewhere; the
        number loaded (resident ones and failures are counted, not loaded)."""
        cache = self._dp.cache
        done = 0
        for m in models:
            mid = ModelId(m.tenant, m.name, m.version)
            if mid not in cache:
                try:
                    _rec, mv = await self._dp.catalog.resolve(m.tenant, m.name, str(m.version))
                    entry = await self._dp.warm(mid, mv)
                    cache.release(entry)
                except WorkerError as exc:
                    log.info("preload of %s skipped: %s", mid, exc)
                    self._m.preloads.labels("failed").inc()
                    continue
                done += 1
                self._m.preloads.labels("loaded").inc()
            else:
                self._m.preloads.labels("resident").inc()
            entry_now = cache.peek(mid)
            if entry_now is not None:
                policy = cache.policy(entry_now.tier)
                policy.seed(mid, m.score)
                policy.admitted(entry_now)
        return done

    # --- pins -----------------------------------------------------------------------------

    def _unpin(self, entry: Entry[ModelId, Model]) -> None:
        if entry.pins > 0:
            self._dp.cache.release(entry)

    async def _pin(self, models: tuple[tuple[str, str], ...]) -> None:
        want: dict[ModelId, ModelVersion] = {}
        for tenant, name in models:
            try:
                rec, _mv = await self._dp.catalog.resolve(tenant, name, "")
                route = default_route(rec)
                if route is None:
                    raise UnknownVersion(f"model {tenant}/{name} has no versions")
            except (WorkerError, UnknownVersion) as exc:
                log.warning("pinned model %s/%s unavailable: %s", tenant, name, exc)
                continue
            for v in route.versions:
                if v in rec.versions:
                    want[ModelId(tenant, name, v)] = rec.versions[v]
        for mid in [k for k in self.pinned if k not in want]:
            self._unpin(self.pinned.pop(mid))
        cache = self._dp.cache
        limit = int(self._host_budget * self.max_pinned_fraction)
        for mid, mv in want.items():
            held = self.pinned.get(mid)
            if held is not None and cache.peek(mid) is held:
                continue
            if held is not None:  # displaced by a removal (quarantine, a new record)
                self._unpin(self.pinned.pop(mid))
            used = sum(e.nbytes for e in self.pinned.values())
            resident = cache.peek(mid)
            size = resident.nbytes if resident is not None else mv.size
            if used + size > limit:
                log.error(
                    "pin of %s refused: %d pinned bytes + %d > %d (%.0f%% of the host budget)",
                    mid, used, size, limit, self.max_pinned_fraction * 100,
                )  # fmt: skip
                self._m.pinned_refused.inc()
                continue
            try:
                entry = await self._dp.warm(mid, mv)
            except WorkerError as exc:
                log.warning("pinned model %s could not load: %s", mid, exc)
                continue
            if cache.peek(mid) is entry:
                self.pinned[mid] = entry  # its reference is the pin
            else:
                self._unpin(entry)
        self._m.pinned_models.set(len(self.pinned))
        self._m.pinned_bytes.set(sum(e.nbytes for e in self.pinned.values()))
