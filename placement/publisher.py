"""The leader's snapshot loop: watch ``/shoal/workers/``, publish ``/shoal/placement/<pool>``.

On start it reads every worker record and the snapshots already published (a new leader
continues their epochs), then watches the workers from the revision it read and feeds every
event to a ``MembershipTracker``; when the tracker's debounce window closes it publishes the
pools whose membership changed. A broken watch is handled by a full re-read (nothing that
happened meanwhile is missed) after a short pause.

Every publish is a transaction that also compares the election key's revision (the leader's
fence): a deposed leader's write fails, and ``run`` raises ``NotLeader``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from placement.election import NotLeader
from placement.membership import MembershipTracker
from placement.warmth import WarmPlanner
from shoal.records import PLACEMENT, WORKERS, PoolSnapshot, placement_key
from shoal.state import Compare, Put, StateError, StateStore, WatchEvent, read_prefix
from shoal.tasks import cancel_and_wait

log = logging.getLogger(__name__)

#: How often the hand-off planner looks at pins and hot lists (they change outside the watch).
PLAN_TICK_S = 1.0


class SnapshotPublisher:
    """Publishes pool snapshots while this instance leads (see module docstring)."""

    def __init__(
        self,
        store: StateStore,
        fence: Compare,
        shard_size: int,
        debounce_s: float,
        now: Callable[[], float] = time.time,
        on_publish: Callable[[PoolSnapshot], None] | None = None,
        retry_s: float = 0.5,
        planner: WarmPlanner | None = None,
    ) -> None:
        self._store = store
        self._fence = fence
        self._shard_size = shard_size
        self._now = now
        self._on_publish = on_publish
        self._retry_s = retry_s
        self.planner = planner
        self.tracker = MembershipTracker(debounce_s, time.monotonic)
        if planner is not None:
            self.tracker.keep = planner.keep
        self.published: dict[str, PoolSnapshot] = {}
        self._planned: object = None

    async def run(self) -> None:
        """Run until cancelled; raises ``NotLeader`` when the fence no longer holds."""
        while True:
            try:
                await self._follow()
            except StateError as exc:
                log.warning("snapshot publisher: %s; re-reading workers", exc)
                await asyncio.sleep(self._retry_s)

    async def _follow(self) -> None:
        snaps, _ = await read_prefix(self._store, PLACEMENT)
        for kv in snaps:
            snap = PoolSnapshot.decode(kv.value)
            self.published[snap.pool] = snap
        workers, revision = await read_prefix(self._store, WORKERS)
        self.tracker.reset({kv.key: kv.value for kv in workers})
        queue: asyncio.Queue[WatchEvent | BaseException] = asyncio.Queue()
        watch = await self._store.watch(WORKERS, revision + 1)

        async def pump() -> None:
            try:
                async for ev in watch:
                    queue.put_nowait(ev)
                queue.put_nowait(StateError("worker watch ended"))
            except StateError as exc:
                queue.put_nowait(exc)

        pump_task = asyncio.create_task(pump())
        try:
            await self._plan()
            while True:
                due = self.tracker.due_in()
                if self.planner is not None:  # pins and hot lists change outside this watch
                    due = PLAN_TICK_S if due is None else min(due, PLAN_TICK_S)
                item: WatchEvent | BaseException | None = None
                if due is None or due > 0:
                    with contextlib.suppress(TimeoutError):
                        item = await asyncio.wait_for(queue.get(), due)
                if isinstance(item, BaseException):
                    raise item
                if item is not None:
                    self.tracker.apply(item)
                await self._plan()  # before publishing: a leaving worker's hold starts here
                if self.tracker.take_due():
                    await self._publish()
        finally:
            await watch.cancel()
            await cancel_and_wait(pump_task)

    async def _plan(self) -> None:
        """Let the hand-off planner see the records (when anything it reads changed)."""
        p = self.planner
        if p is None:
            return
        epochs = tuple(s.epoch for s in self.published.values())
        state = (self.tracker.changes, p.generation(), epochs)
        if state == self._planned and not p.holding():
            return
        self._planned = state
        if await p.step(self.tracker.workers, self.published):
            self.tracker.wake_at(time.monotonic())  # a hold ended: publish without the leaver
        deadline = p.deadline()
        if deadline is not None:
            self.tracker.wake_at(deadline)

    async def _publish(self) -> None:
        for snap in self.tracker.changed_snapshots(self.published, self._shard_size, self._now()):
            res = await self._store.txn(
                [self._fence], [Put(placement_key(snap.pool), snap.encode())]
            )
            if not res.succeeded:
                raise NotLeader("the election key changed: another instance leads")
            self.published[snap.pool] = snap
            log.info(
                "published pool %s epoch %d: %s",
                snap.pool,
                snap.epoch,
                ", ".join(m.worker_id for m in snap.members) or "(no members)",
            )
            if self._on_publish is not None:
                self._on_publish(snap)
