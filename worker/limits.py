"""Admission limits of the worker: rows per request, and a concurrency bound per model.

* ``check_rows``: a request whose inputs carry more than ``max_rows`` rows (first dimension)
  is refused with RESOURCE_EXHAUSTED naming the limit, before any model is resolved. (Bytes
  are bounded earlier, by gRPC's ``max_receive_message_length``.)
* ``Slots`` (``shoal.slots``): a FIFO counting semaphore with a bounded line and timeouts.
* ``ModelLimiter``: one ``Slots`` per model (``tenant/name``): at most ``limit`` runtime calls
  of one model run at once; up to ``max_waiting`` more wait at most ``wait_s`` (and never past
  their own deadline). Beyond that a request gets RESOURCE_EXHAUSTED naming the model, so one
  hot model cannot take every prediction thread while the others starve. Idle models are
  forgotten, so memory is bounded by the models with work under way.

Event loop only; nothing here is thread-safe.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from shoal.slots import Admission, Slots
from worker.errors import Busy, DeadlineExceeded, ResourceExhausted
from worker.types import Tensor

__all__ = ["Admission", "ModelLimiter", "Slots", "check_rows"]


def check_rows(inputs: Sequence[Tensor], max_rows: int) -> None:
    """RESOURCE_EXHAUSTED when an input has more than ``max_rows`` rows."""
    for t in inputs:
        shape = t.array.shape
        if shape and shape[0] > max_rows:
            raise ResourceExhausted(
                f"input {t.name!r} has {shape[0]} rows; this worker accepts at most "
                f"{max_rows} rows per request (SHOAL_MAX_REQUEST_ROWS): split the batch"
            )


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
        raise Busy(
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
