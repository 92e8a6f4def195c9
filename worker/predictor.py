"""One prediction of a loaded model version, guarded: what the data plane and the batcher call.

``Predictor.predict(mid, model, arrays, deadline)``:

1. waits for the model's concurrency bound (``ModelLimiter``: RESOURCE_EXHAUSTED naming the
   model when it is busy beyond its short queue; DEADLINE_EXCEEDED if the caller's deadline
   passes while it waits);
2. runs the call inline on the event loop when ``InlinePolicy`` allows (a bounded model
   proven fast, small inputs, no fault injected), else through ``RuntimeCalls`` (prediction-
   thread gate, deadline check right before the runtime is entered, ``predict_timeout_s``
   after which the call is abandoned);
3. keeps the books: every successful call's CPU time feeds the inline policy; a success
   forgets the version's failures; a runtime exception answers INTERNAL and counts against
   the version, ``quarantine_after`` consecutive failures quarantine it (``FailureMemory``:
   exponential backoff); a hang (timeout) quarantines it at once, for as long as the stuck
   thread has not returned at least. A call that was not run (deadline, no thread) is not
   the model's fault and counts for nothing.

``check(mid)`` is the quarantine's answer for a version before anything else is done for it.
Other models are unaffected by one model's failures.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import partial
from typing import cast

import numpy as np

from shoal.frameworks import Model
from worker.calls import Abandoned, RuntimeCalls
from worker.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    ResourceExhausted,
    WorkerError,
)
from worker.faults import Faults
from worker.inline import InlinePolicy
from worker.limits import ModelLimiter
from worker.metrics import WorkerMetrics
from worker.quarantine import FailureMemory
from worker.types import ModelId

log = logging.getLogger(__name__)

Outs = list[np.ndarray]
#: One runtime call, ready to run (the model's predict on its inputs, faults wrapped in).
Call = Callable[[], Outs]
Deadline = float | None


class Predictor:
    """Guarded predictions (see the module docstring)."""

    def __init__(
        self,
        calls: RuntimeCalls,
        limiter: ModelLimiter,
        quarantine: FailureMemory,
        metrics: WorkerMetrics,
        inline: InlinePolicy | None = None,
        faults: Faults | None = None,
    ) -> None:
        self._calls = calls
        self._limiter = limiter
        self._quarantine = quarantine
        self._metrics = metrics
        self._inline = inline
        self._faults = faults or Faults()
        m = metrics
        self._rejected_busy = m.child(m.rejected, "concurrency")
        self._expired_queue = m.child(m.expired, "queue")
        self._expired_pool = m.child(m.expired, "pool")
        self._quarantines = m.child(m.quarantines, "predict")

    def check(self, mid: ModelId) -> WorkerError | None:
        """The quarantine's error for ``mid`` while it lasts, else None."""
        return self._quarantine.check(mid)

    def faulted(self, mid: ModelId) -> bool:
        """Whether a fault is injected into ``mid``'s predictions (they must run here)."""
        return self._faults.affects("predict", f"{mid.tenant}/{mid.name}")

    def loaded(self, mid: ModelId, model: Model) -> None:
        """A version was just loaded: its load-time 1-row prediction, if any, stands for the
        proof that its calls are fast (``InlinePolicy.seed``)."""
        if self._inline is not None and model.warm_s is not None:
            self._inline.seed(mid, model.warm_s)

    async def predict(
        self, mid: ModelId, model: Model, arrays: list[np.ndarray], deadline: float | None
    ) -> list[np.ndarray]:
        """One runtime call under the model's concurrency bound, the pool's gate and timeout."""
        name = f"{mid.tenant}/{mid.name}"
        try:
            await self._limiter.acquire(name, deadline)
        except ResourceExhausted:
            self._rejected_busy.inc()
            raise
        except DeadlineExceeded:
            self._expired_queue.inc()
            raise
        try:
            rows = len(arrays[0]) if arrays and arrays[0].ndim else 1
            faulted = self._faults.affects("predict", name)
            call = self._faults.wrap("predict", name, partial(model.predict, arrays))
            inline = self._inline
            if inline is not None and not faulted and inline.eligible(mid, model.bounded, arrays):
                return self._inline_call(mid, call, rows, deadline)
            return await self._pooled_call(mid, call, rows, deadline)
        finally:
            self._limiter.release(name)

    async def run_batch(
        self, key: object, model: object, rows: np.ndarray, deadline: float | None
    ) -> list[np.ndarray]:
        """The batcher's runner: one merged runtime call, guarded like any prediction."""
        return await self.predict(cast(ModelId, key), cast(Model, model), [rows], deadline)

    async def _pooled_call(self, mid: ModelId, call: Call, rows: int, deadline: Deadline) -> Outs:
        observe = self._metrics.batch_rows.observe
        took = 0.0

        def timed() -> list[np.ndarray]:  # on the pool thread, once it is sure to run
            nonlocal took
            observe(rows)
            started = time.thread_time()
            out = call()
            took = time.thread_time() - started
            return out

        try:
            outs = await self._calls.run(mid, timed, deadline)
        except WorkerError:  # not run (deadline passed, no thread): not the model's fault
            raise
        except Abandoned as exc:
            if self._inline is not None:
                self._inline.forget(mid)
            err = FailedPrecondition(f"{mid} is quarantined: a prediction hung ({exc})")
            self._record(mid, err, immediate=True)
            raise DeadlineExceeded(
                f"{exc} (SHOAL_PREDICT_TIMEOUT_S) and was abandoned; {mid} is quarantined"
            ) from None
        except Exception as exc:
            raise self._failed(mid, exc) from None
        self._succeeded(mid, took)
        return outs

    def _inline_call(self, mid: ModelId, call: Call, rows: int, deadline: Deadline) -> Outs:
        """A short prediction run on the event loop (``worker.inline``): no thread hand-off."""
        if deadline is not None and time.monotonic() > deadline:
            self._expired_pool.inc()
            raise DeadlineExceeded(f"deadline passed before {mid} was run; not run")
        self._metrics.batch_rows.observe(rows)
        self._metrics.inline_predictions.inc()
        started = time.thread_time()
        try:
            outs = call()
        except Exception as exc:
            raise self._failed(mid, exc) from None
        self._succeeded(mid, time.thread_time() - started)
        return outs

    def _failed(self, mid: ModelId, exc: Exception) -> WorkerError:
        """A runtime exception: counts towards quarantine; the error to answer."""
        log.error("prediction of %s failed", mid, exc_info=exc)
        if self._inline is not None:
            self._inline.forget(mid)
        what = f"{type(exc).__name__}: {exc}"
        self._record(
            mid, FailedPrecondition(f"{mid} is quarantined: its predictions fail ({what})")
        )
        return Internal(f"prediction of {mid} failed: {what}")

    def native_outcome(self, mid: ModelId, kind: str, message: str, consecutive: int) -> None:
        """A prediction the native front ran failed (``kind`` "failed": the ``consecutive``-th
        failure in a row) or hung ("hung"): booked as if it had run here."""
        if self._inline is not None:
            self._inline.forget(mid)
        if kind == "hung":
            err = FailedPrecondition(f"{mid} is quarantined: a prediction hung ({message})")
            self._record(mid, err, immediate=True)
            return
        if consecutive <= 1:
            self._quarantine.clear(mid)  # the native successes since the last failure
        log.error("prediction of %s failed: %s", mid, message)
        self._record(
            mid, FailedPrecondition(f"{mid} is quarantined: its predictions fail ({message})")
        )

    def _succeeded(self, mid: ModelId, cpu_s: float) -> None:
        if self._inline is not None:
            self._inline.observe(mid, cpu_s)
        if len(self._quarantine):
            self._quarantine.clear(mid)

    def _record(self, mid: ModelId, err: WorkerError, immediate: bool = False) -> None:
        delay = self._quarantine.record(mid, err, immediate)
        if delay:
            self._quarantines.inc()
            log.error("%s quarantined for %.1fs: %s", mid, delay, err.message)
