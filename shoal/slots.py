"""A FIFO counting semaphore for the event loop, with a bounded waiting line and timeouts.

``Slots`` hands a released slot to the oldest waiter, so a waiter is never overtaken by a
later arrival; its line is bounded (``max_waiting``) and every wait has a timeout. The worker
bounds calls per model with it (``worker.limits``) and gates its runtime threads
(``worker.calls``); the router's per-tenant quotas are the native gateway's now. Event loop
only; nothing here is thread-safe.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from enum import Enum


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
