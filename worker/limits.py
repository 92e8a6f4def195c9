"""Admission limits of the worker: rows per request, and a concurrency bound per model.

* ``check_rows``: a request whose inputs carry more than ``max_rows`` rows (first dimension)
  is refused with RESOURCE_EXHAUSTED naming the limit, before any model is resolved. (Bytes
  are bounded earlier, by gRPC's ``max_receive_message_length``.)
* ``Slots``: a FIFO counting semaphore for the event loop whose waiting line is bounded and
  whose waits time out. A released slot is handed to the oldest waiter, so a waiter is never
  overtaken by a later arrival.
* ``ModelLimiter``: one ``Slots`` per model (``tenant/name``): at most ``limit`` runtime calls
  of one model run at once; up to ``max_waiting`` more wait at most ``wait_s`` (and never past
  their own deadline). Beyond that a request gets RESOURCE_EXHAUSTED naming the model, so one
  hot model cannot take every prediction thread while the others starve. Idle models are
  forgotten, so memory is bounded by the models with work under way.

Event loop only; nothing here is thread-safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from enum import Enum

from worker.errors import DeadlineExceeded, ResourceExhausted
from worker.types import Tensor


def check_rows(inputs: Sequence[Tensor], max_rows: int) -> None:
    """RESOURCE_EXHAUSTED when an input has more than ``max_rows`` rows."""
    for t in inputs:
        shape = t.array.shape
        if shape and shape[0] > max_rows:
            raise ResourceExhausted(
                f"input {t.name!r} has {shape[0]} rows; this worker accepts at most "
                f"{max_rows} rows per request (SHOAL_MAX_REQUEST_ROWS): split the batch"
            )


class Admission(Enum):
    GRANTED = "granted"
    FULL = "full"  # the waiting line is full: refused without waiting
    TIMEOUT = "timeout"  # waited ``timeout`` seconds without getting a slot


class Slots:
    """``limit`` slots, FIFO, with at most ``max_waiting`` waiters (None: unbounded)."""

    __slots__ = ("_waiters", "held", "limit", "max_waiting")

    def __init__(self, limit: int, max_waiting: int | None = None) -> None:
        self.limit = max(1, limit)
        self.max_waiting = max_waiting
        self.held = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @property
    def idle(self) -> bool:
        return self.held == 0 and not self._waiters

    def try_acquire(self) -> bool:
        if self.held < self.limit and not self._waiters:
            self.held += 1
            return True
        return False

    async def acquire(self, timeout: float | None) -> Admission:
        """A slot (``GRANTED``), or why not; waits at most ``timeout`` seconds (None: forever).

        A caller cancelled while waiting leaves the line; a slot handed to it at that very
        moment is passed on, so cancellations never leak slots.
        """
        if self.try_acquire():
            return Admission.GRANTED
        if self.max_waiting is not None and len(self._waiters) >= self.max_waiting:
            return Admission.FULL
        if timeout is not None and timeout <= 0:
            return Admission.TIMEOUT
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(fut)
        except TimeoutError:
            if self._leave_line(fut):
                return Admission.GRANTED  # handed over just as the wait ran out
            return Admission.TIMEOUT
        except asyncio.CancelledError:
            if self._leave_line(fut):
                self.release()
            raise
        return Admission.GRANTED

    def _leave_line(self, fut: asyncio.Future[None]) -> bool:
        """Take ``fut`` out of the line; True when a slot had already been handed to it."""
        if fut.done():
            return not fut.cancelled()
        fut.cancel()
        with contextlib.suppress(ValueError):
            self._waiters.remove(fut)
        return False

    def release(self) -> None:
        """Free a slot: hand it to the oldest live waiter, or return it to the pool."""
        while self._waiters:
            w = self._waiters.popleft()
            if not w.done():
                w.set_result(None)
                return
        self.held -= 1


class ModelLimiter:
    """Per-model concurrency bound with a short, bounded wait (see the module docstring)."""

    def __init__(
        self,
        limit: int,
        max_waiting: int,
        wait_s: float,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = max(1, limit)
        self.max_waiting = max(0, max_waiting)
        self.wait_s = wait_s
        self._now = now
        self._slots: dict[str, Slots] = {}

    def __len__(self) -> int:
        """Models with calls running or waiting (idle ones are forgotten)."""
        return len(self._slots)

    async def acquire(self, model: str, deadline: float | None) -> None:
        """A slot of ``model``; RESOURCE_EXHAUSTED naming it, or DEADLINE_EXCEEDED when the
        caller's deadline (monotonic seconds) passes first. Pair with ``release``."""
        slots = self._slots.get(model)
        if slots is None:
            slots = self._slots[model] = Slots(self.limit, self.max_waiting)
        if slots.try_acquire():
            return
        wait = self.wait_s
        by_deadline = False
        if deadline is not None and deadline - self._now() < wait:
            wait = deadline - self._now()
            by_deadline = True
        outcome = await slots.acquire(wait)
        if outcome is Admission.GRANTED:
            return
        if slots.idle:
            self._slots.pop(model, None)
        if outcome is Admission.TIMEOUT and by_deadline:
            raise DeadlineExceeded(
                f"deadline passed while waiting for {model} (busy: {self.limit} calls running); "
                "the prediction was not run"
            )
        if outcome is Admission.FULL:
            detail = f"{slots.waiting} requests already waiting"
        else:
            detail = f"no slot freed within {self.wait_s:g}s"
        raise ResourceExhausted(
            f"model {model} is at its concurrency limit on this worker ({self.limit} calls "
            f"running, {detail}; SHOAL_MODEL_MAX_CONCURRENCY, SHOAL_MODEL_MAX_QUEUE): retry later"
        )

    def release(self, model: str) -> None:
        slots = self._slots.get(model)
        if slots is None:
            return
        slots.release()
        if slots.idle:
            del self._slots[model]
