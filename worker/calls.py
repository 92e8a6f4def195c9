"""Blocking runtime calls (predictions, deserializations) run off the event loop, bounded.

``RuntimeCalls`` owns how a call reaches a pool thread and how long anyone waits for it:

* **Gate.** At most ``capacity`` calls run at once; more wait in FIFO order on the loop. The
  thread pool behind it has ``capacity + headroom`` threads (the server sizes it): the spare
  threads stand in for calls abandoned as stuck, so up to ``headroom`` hung calls cost the
  healthy ones nothing. Further hung calls do shrink the pool — a Python thread cannot be
  killed — and when no thread at all is free, a call that cannot start within the timeout is
  withdrawn and answered UNAVAILABLE (this worker is degraded; the router tries another).
* **Deadline.** A call whose caller's deadline has passed when it would start — still waiting
  at the gate, or queued for a thread — is not run: DEADLINE_EXCEEDED, counted in
  ``shoal_worker_expired{stage="pool"}``.
* **Timeout.** Once submitted, the caller waits at most ``timeout_s``. Then the call is
  *abandoned*: the caller gets ``Abandoned`` (the owner quarantines the model version), the call
  leaves the gate, and it counts as stuck (``shoal_worker_stuck_calls{kind}``, and
  ``stuck(key)``) until its thread returns, when its result is dropped.
* **Cancellation.** A caller that goes away withdraws a call not yet started; a call already
  running finishes on its thread and keeps its gate slot until then, so the gate always
  reflects the threads really busy.

The gate and the bookkeeping live on the event loop; pool threads only report back through
``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Hashable
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from worker.errors import DeadlineExceeded, Unavailable
from worker.limits import Admission, Slots
from worker.metrics import WorkerMetrics

log = logging.getLogger(__name__)

T = TypeVar("T")


class Abandoned(Exception):
    """The call ran longer than the timeout and was left running on its thread."""

    def __init__(self, kind: str, key: Hashable, timeout_s: float) -> None:
        super().__init__(f"{kind} of {key} ran longer than {timeout_s:g}s")
        self.timeout_s = timeout_s


class _Expired(Exception):
    """Raised on the pool thread: the deadline passed before the call started."""


@dataclass(slots=True)
class _Call(Generic[T]):
    key: Hashable
    future: asyncio.Future[T]
    submitted: float
    abandoned: bool = False


class RuntimeCalls:
    """See the module docstring. ``kind`` labels metrics and messages (predict | load)."""

    def __init__(
        self,
        kind: str,
        executor: Executor,
        capacity: int,
        timeout_s: float,
        metrics: WorkerMetrics,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kind = kind
        self.timeout_s = timeout_s
        self._executor = executor
        self._gate = Slots(capacity)
        self._metrics = metrics
        self._now = now
        self._stuck: Counter[Hashable] = Counter()
        self._expired = metrics.child(metrics.expired, "pool")
        self._abandoned = metrics.child(metrics.abandoned, kind)
        metrics.stuck_calls.labels(kind).set_function(lambda: self.stuck_total)

    @property
    def capacity(self) -> int:
        return self._gate.limit

    @property
    def running(self) -> int:
        """Calls holding the gate (started or about to start; abandoned ones excluded)."""
        return self._gate.held

    @property
    def stuck_total(self) -> int:
        return sum(self._stuck.values())

    def stuck(self, key: Hashable) -> int:
        """Abandoned calls of ``key`` whose threads have not returned."""
        return self._stuck.get(key, 0)

    async def run(
        self,
        key: Hashable,
        fn: Callable[[], T],
        deadline: float | None = None,
        timed: bool = True,
    ) -> T:
        """``fn()`` on a pool thread; bounded as the module docstring says.

        ``timed=False`` waits as long as it takes: for work that is not a model's, such as a
        library import.

        Raises ``DeadlineExceeded`` (not run: the deadline passed first), ``Abandoned``
        (timed out; still running), ``Unavailable`` (no thread could start it) or whatever
        ``fn`` raised.
        """
        if not self._gate.try_acquire():
            wait = None if deadline is None else deadline - self._now()
            if await self._gate.acquire(wait) is not Admission.GRANTED:
                self._expired.inc()
                raise DeadlineExceeded(
                    f"deadline passed while {key} waited for a {self.kind} thread; not run"
                )
        loop = asyncio.get_running_loop()
        try:
            cf = self._executor.submit(self._start, deadline, fn)
        except BaseException:
            self._gate.release()
            raise
        call: _Call[T] = _Call(key, loop.create_future(), self._now())

        def done(f: Future[T]) -> None:  # on the pool thread, or the loop on cancel
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is waiting
                loop.call_soon_threadsafe(self._landed, call, f)

        cf.add_done_callback(done)
        try:
            async with asyncio.timeout(self.timeout_s if timed else None):
                # Not shielded: the timeout (or the caller going away) cancels the future, so
                # ``_landed`` later finds it done and drops the result.
                return await call.future
        except TimeoutError:
            if cf.done():  # it finished as the timer fired: the result is here
                return cf.result()
            if cf.cancel():  # never started: every thread of the pool is stuck
                raise Unavailable(
                    f"no {self.kind} thread became free within {self.timeout_s:g}s "
                    f"({self.stuck_total} calls stuck on this worker)"
                ) from None
            self._abandon(call)
            raise Abandoned(self.kind, key, self.timeout_s) from None
        except asyncio.CancelledError:
            cf.cancel()  # not started yet: it never will; running: it finishes unobserved
            raise
        except _Expired:
            self._expired.inc()
            waited = self._now() - call.submitted
            raise DeadlineExceeded(
                f"deadline passed while {key} was queued for a {self.kind} thread "
                f"({waited * 1000:.0f} ms); not run"
            ) from None

    def _start(self, deadline: float | None, fn: Callable[[], T]) -> T:
        """On the pool thread: the last check before the runtime is entered."""
        if deadline is not None and self._now() > deadline:
            raise _Expired
        return fn()

    def _abandon(self, call: _Call[Any]) -> None:
        call.abandoned = True
        self._stuck[call.key] += 1
        self._abandoned.inc()
        self._gate.release()  # its thread is now covered by the pool's headroom
        log.error(
            "%s of %s abandoned after %.1fs; its thread stays busy until the runtime returns "
            "(%d calls stuck)",
            self.kind,
            call.key,
            self.timeout_s,
            self.stuck_total,
        )

    def _landed(self, call: _Call[T], cf: Future[T]) -> None:
        """On the loop, once the pool thread is done with the call (or it was withdrawn)."""
        if call.abandoned:
            self._stuck[call.key] -= 1
            if self._stuck[call.key] <= 0:
                del self._stuck[call.key]
            log.warning(
                "abandoned %s of %s returned after %.1fs",
                self.kind,
                call.key,
                self._now() - call.submitted,
            )
            return
        self._gate.release()
        fut = call.future
        if fut.done():
            return
        if cf.cancelled():
            fut.cancel()
            return
        exc = cf.exception()
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(cf.result())
