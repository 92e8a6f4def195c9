"""Adaptive batching: concurrent requests for one model merged into one runtime call.

Policy (per model): a request that arrives while the model has no batch running is sent at
once, alone or with whatever is queued — so a lightly loaded model pays no added delay. While
a batch runs, arrivals queue; the queue goes out as one call when (a) the running batch
finishes, (b) it reaches ``max_rows``, or (c) its oldest request has waited ``max_delay``.
Batch size therefore grows with load, which is where merging pays: a tree ensemble costs about
the same for 64 rows as for 1.

With ``when_idle=False`` the batcher always waits, Triton-style: a queue goes out only when it
reaches ``max_rows`` or its oldest request has waited ``max_delay``.

Rows are concatenated along axis 0 (single-input models whose first dimension is the batch);
every output is split back by the same row counts, so each caller gets exactly the rows it
sent. A runtime error fails every request of that batch. Not thread-safe: event loop only.

Deadlines: each request may carry its caller's deadline (monotonic seconds). When a batch is
taken from the queue, requests whose caller has gone (cancelled, e.g. by gRPC at the deadline)
are dropped, and those whose deadline has passed are answered ``DeadlineExceeded`` without
being run (``on_expired`` counts them); a batch left empty makes no runtime call. The merged
call carries the latest deadline of its requests, so it is still skipped if every one of them
expires while it waits for a thread.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

from worker.errors import DeadlineExceeded

#: Runs one merged call: (key, model, rows, deadline) -> outputs. ``model`` is opaque here.
RunFn = Callable[[object, object, np.ndarray, float | None], Awaitable[list[np.ndarray]]]


@dataclass(slots=True)
class _Item:
    model: object
    rows: np.ndarray
    future: asyncio.Future[list[np.ndarray]]
    deadline: float | None = None
    queued: float = 0.0


@dataclass(slots=True)
class _Queue:
    items: list[_Item] = field(default_factory=list)
    rows: int = 0
    running: int = 0
    timer: asyncio.TimerHandle | None = None


class Batcher:
    """Merges concurrent calls per key; ``run`` executes one merged call (off the loop)."""

    def __init__(
        self,
        run: RunFn,
        max_rows: int,
        max_delay_s: float,
        when_idle: bool = True,
        on_expired: Callable[[], None] | None = None,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self._run = run
        self.max_rows = max(1, max_rows)
        self.max_delay_s = max_delay_s
        self.when_idle = when_idle
        self._on_expired = on_expired or (lambda: None)
        self._now = now
        self._queues: dict[object, _Queue] = {}

    def __len__(self) -> int:
        """Keys with queued or running work (idle keys are forgotten)."""
        return len(self._queues)

    async def predict(
        self, key: object, model: object, rows: np.ndarray, deadline: float | None = None
    ) -> list[np.ndarray]:
        loop = asyncio.get_running_loop()
        q = self._queues.get(key)
        if q is None:
            if self.when_idle and len(rows) <= self.max_rows:
                return await self._alone(key, model, rows, deadline)
            q = self._queues[key] = _Queue()
        fut: asyncio.Future[list[np.ndarray]] = loop.create_future()
        q.items.append(_Item(model, rows, fut, deadline, self._now()))
        q.rows += len(rows)
        if q.rows >= self.max_rows or (self.when_idle and q.running == 0):
            self._dispatch(key, q)
        elif q.timer is None:
            q.timer = loop.call_later(self.max_delay_s, self._dispatch, key, q)
        return await fut

    async def _alone(
        self, key: object, model: object, rows: np.ndarray, deadline: float | None
    ) -> list[np.ndarray]:
        """Nothing queued or running for ``key``: run in the caller's own task.

        The common case on a lightly loaded model, so it skips the batch's task and future;
        requests arriving meanwhile queue as behind any running batch and go out when it ends.
        """
        q = self._queues[key] = _Queue(running=1)
        try:
            return await self._run(key, model, rows, deadline)
        finally:
            q.running -= 1
            if q.running == 0:
                if q.items:
                    self._dispatch(key, q)
                else:
                    self._queues.pop(key, None)

    def _dispatch(self, key: object, q: _Queue) -> None:
        if q.timer is not None:
            q.timer.cancel()
            q.timer = None
        while q.items:
            batch: list[_Item] = []
            n = 0
            while q.items and (not batch or n + len(q.items[0].rows) <= self.max_rows):
                item = q.items.pop(0)
                batch.append(item)
                n += len(item.rows)
            q.rows -= n
            q.running += 1
            asyncio.get_running_loop().create_task(self._execute(key, q, batch))
            if q.rows < self.max_rows:
                break
        if q.items and q.timer is None:
            q.timer = asyncio.get_running_loop().call_later(
                self.max_delay_s, self._dispatch, key, q
            )

    def _live(self, batch: list[_Item]) -> list[_Item]:
        """The items still worth running: callers present, deadlines not passed."""
        now = self._now()
        live = []
        for it in batch:
            if it.deadline is not None and now > it.deadline:
                # Counted even when gRPC already cancelled the caller at its deadline.
                self._on_expired()
                if not it.future.done():
                    it.future.set_exception(
                        DeadlineExceeded(
                            f"deadline passed after {(now - it.queued) * 1000:.0f} ms waiting "
                            "to be batched; the prediction was not run"
                        )
                    )
            elif not it.future.done():  # else the caller went away
                live.append(it)
        return live

    async def _execute(self, key: object, q: _Queue, batch: list[_Item]) -> None:
        try:
            batch = self._live(batch)
            if not batch:
                return
            deadlines = [it.deadline for it in batch]
            deadline = None if None in deadlines else max(d for d in deadlines if d is not None)
            if len(batch) == 1:
                outs = [await self._run(key, batch[0].model, batch[0].rows, deadline)]
            else:
                merged = np.concatenate([it.rows for it in batch], axis=0)
                whole = await self._run(key, batch[0].model, merged, deadline)
                outs = _split(whole, [len(it.rows) for it in batch])
            for it, out in zip(batch, outs, strict=True):
                if not it.future.done():
                    it.future.set_result(out)
        except BaseException as exc:  # every caller of the batch sees the failure
            for it in batch:
                if not it.future.done():
                    it.future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            q.running -= 1
            if q.items and q.running == 0 and self.when_idle:
                self._dispatch(key, q)
            elif not q.items and q.running == 0:
                self._queues.pop(key, None)


def _split(outputs: list[np.ndarray], counts: list[int]) -> list[list[np.ndarray]]:
    """Per-caller outputs: each output array cut along axis 0 by ``counts``."""
    cuts = np.cumsum(counts)[:-1]
    per_output = [np.split(o, cuts, axis=0) for o in outputs]
    return [[parts[i] for parts in per_output] for i in range(len(counts))]
