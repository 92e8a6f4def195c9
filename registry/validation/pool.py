"""The validation pools: worker processes (``ProcessValidator``), or threads in this process
(``ThreadValidator``). Both take a batch and answer one outcome per item, in order: an
``ArtifactInfo`` or the exception ``inspect_artifact`` raised. A batch is split into a few
chunks, one request each, so the hand-off costs per chunk, not per artifact; at most
``workers`` loads run at once.

Worker processes (``registry.validation.worker``) are started fresh with ``subprocess`` (never
forked from a process running grpc and tokio threads), with a minimal environment
(``worker_env``: no credentials) and one native thread each, and speak
``registry.validation.protocol`` over their stdin and stdout pipes. Failure modes; each costs
its worker (killed and reaped; a new one starts on demand):

* the worker dies mid-request (EOF: a crash in a native loader) or misses the request's
  deadline (``timeout_s`` plus a second per MiB sent): that chunk's items are retried one at a
  time on other workers, so the culprit alone gets ``ArtifactError`` ("the validator
  crashed / timed out loading this artifact") and the others their real outcome; other
  chunks are not affected (a worker found dead while idle is replaced, blaming nothing);
* the answer is malformed or larger than ``ANSWER_LIMIT``: none of it is trusted, and every
  item of the chunk gets ``ArtifactError(MALFORMED)``;
* a new worker that does not say it is ready within ``start_timeout_s``: ``RuntimeError``.

Workers stop after ``idle_s`` without a validation and start again on the next one (or on
``start()``). ``close()`` stops them (SIGTERM, SIGKILL after ``stop_s``) and reaps them;
validating afterwards raises ``RuntimeError``. They also exit when this process dies: at
EOF on their stdin, or by a parent-death signal while busy.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from registry.validation.protocol import (
    MALFORMED,
    Item,
    MalformedAnswer,
    Outcome,
    Task,
    parse_answer,
)
from registry.validation.worker import Died, TimedOut, WorkerProcess, limit_native_threads
from shoal.artifacts import ArtifactError, ArtifactInfo
from shoal.frameworks import inspect_artifact

log = logging.getLogger(__name__)

Inspect = Callable[[bytes, str], ArtifactInfo]

#: Most artifacts in one request: few enough that one batch still spreads over the workers.
CHUNK = 32


def _chunks(n: int, workers: int) -> list[range]:
    """Split ``range(n)`` into at least ``workers`` (when n allows) chunks of <= ``CHUNK``."""
    count = max(min(workers, n), -(-n // CHUNK), 1)
    size = -(-n // count)
    return [range(lo, min(lo + size, n)) for lo in range(0, n, size)]


def _inspect(data: bytes, framework: str) -> ArtifactInfo:
    return inspect_artifact(data, framework or None)


class ThreadValidator:
    """``inspect`` on a pool of ``threads`` threads in this process (named shoal-validate)."""

    def __init__(self, threads: int, inspect: Inspect = _inspect) -> None:
        self.workers = max(1, threads)
        self._inspect = inspect
        self._pool = ThreadPoolExecutor(
            self.workers, thread_name_prefix="shoal-validate", initializer=limit_native_threads
        )

    def _run(self, items: Sequence[Item]) -> list[Outcome]:
        out: list[Outcome] = []
        for data, framework in items:
            try:
                out.append(self._inspect(data, framework))
            except Exception as exc:
                out.append(exc)
        return out

    async def validate(self, items: Sequence[Item]) -> list[Outcome]:
        if not items:
            return []
        loop = asyncio.get_running_loop()
        parts = await asyncio.gather(
            *(
                loop.run_in_executor(self._pool, self._run, [items[i] for i in r])
                for r in _chunks(len(items), self.workers)
            )
        )
        return [o for part in parts for o in part]

    def start(self) -> None:
        """Nothing to start: threads start on first use."""

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


# --- reading a worker's answer ----------------------------------------------------------------


# --- the worker processes ---------------------------------------------------------------------

#: What a worker runs: the path this process imports from, then the worker's main.
_BOOT = (
    "import json, sys; sys.path[:] = json.loads(sys.argv[1]); "
    "from registry.validation.worker import main; main()"
)
_KEEP_ENV = ("PATH", "HOME", "TMPDIR", "LANG", "LANGUAGE", "TZ", "LD_LIBRARY_PATH")
_ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def worker_env(environ: Mapping[str, str]) -> dict[str, str]:
    """A worker's environment: paths, locale and temp dir from ``environ``, one native thread.

    Nothing else: no credentials (``SHOAL_*``, ``AWS_*``) in a process that parses untrusted
    bytes. The worker runs ``python -I``, so ``PYTHON*`` variables would be ignored anyway.
    """
    env = {k: v for k, v in environ.items() if k in _KEEP_ENV or k.startswith("LC_")}
    env.update(_ONE_THREAD)
    return env


def _task_name(task: Task) -> str:
    name = f"{task.__module__}:{task.__qualname__}"
    if "." in task.__qualname__ or "<" in name:
        raise ValueError(f"a worker task must be a module-level function, not {name}")
    return name


class _Lost(Exception):
    """A request lost its worker ("crashed" or "timed out"); its items are to be retried."""


class ProcessValidator:
    """``inspect_artifact`` in up to ``processes`` worker processes (see module docstring).

    The constructor starts nothing. Workers start on ``start()`` or on first use (each
    imports the runtimes, ~1-2 s, and then holds ~200 MiB); they stop after ``idle_s``
    seconds without a validation (registration comes in bursts) and in ``close()``. Requests
    run on a pool of ``processes`` threads, one worker each; a thread starts the workers it
    uses, so their parent-death signal is tied to a thread that lives until ``close()``.
    ``task`` is what a worker runs per request, a module-level function named (not pickled)
    to it; tests substitute one.
    """

    def __init__(
        self,
        processes: int,
        task: Task | None = None,
        idle_s: float = 300.0,
        *,
        timeout_s: float = 60.0,
        start_timeout_s: float = 120.0,
        stop_s: float = 5.0,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.workers = max(1, processes)
        self.idle_s = idle_s
        self.timeout_s = timeout_s
        self.start_timeout_s = start_timeout_s
        self.stop_s = stop_s
        self._task = _task_name(task) if task is not None else ""
        self._env = worker_env(os.environ if environ is None else environ)
        self._threads = ThreadPoolExecutor(self.workers, thread_name_prefix="shoal-validate")
        self._lock = threading.Lock()
        self._live: set[WorkerProcess] = set()  # started and not being stopped: idle or held
        self._idle: list[WorkerProcess] = []
        self._stopping: set[WorkerProcess] = set()
        self._closed = False
        self._busy = 0
        self._idle_timer: asyncio.TimerHandle | None = None
        #: Workers replaced after dying, timing out or answering garbage.
        self.restarts = 0

    # -- on the request threads ------------------------------------------------------------

    def _spawn_locked(self) -> WorkerProcess:
        path = json.dumps([str(p) for p in sys.path])
        argv = [sys.executable, "-I", "-c", _BOOT, path, str(os.getpid())]
        argv.append(self._task or "registry.validation.worker:answer_items")
        worker = WorkerProcess(argv, self._env)
        self._live.add(worker)
        return worker

    def _prestart(self) -> None:
        with self._lock:
            if not self._closed and len(self._live) < self.workers:
                self._idle.append(self._spawn_locked())

    def _take(self) -> WorkerProcess:
        while True:
            with self._lock:
                if self._closed:
                    raise RuntimeError("the validation pool is closed")
                if not self._idle:
                    return self._spawn_locked()
                worker = self._idle.pop()
            if worker.proc.poll() is None:
                return worker
            self._drop(worker, "exited while idle")  # killed from outside: not an artifact's doing

    def _give_back(self, worker: WorkerProcess) -> None:
        with self._lock:
            if not self._closed and len(self._live) <= self.workers:
                self._idle.append(worker)
                return
            self._live.discard(worker)  # closed, or one too many after a concurrent start
        worker.signal(signal.SIGTERM)
        worker.finish(time.monotonic() + self.stop_s)

    def _drop(self, worker: WorkerProcess, why: str) -> None:
        with self._lock:
            self._live.discard(worker)
            closed = self._closed
            if not closed:
                self.restarts += 1
        if not closed:
            log.warning("validation worker %d %s; it is replaced", worker.proc.pid, why)
        worker.finish(time.monotonic())

    def _ask(self, items: list[Item]) -> list[Outcome]:
        """One request on one worker; ``_Lost`` when the worker died or timed out."""
        worker = self._take()
        if not worker.ready:
            try:
                worker.await_ready(time.monotonic() + self.start_timeout_s)
            except (Died, TimedOut, MalformedAnswer) as exc:
                self._drop(worker, "did not start")
                if self._closed:
                    raise RuntimeError("the validation pool is closed") from None
                why = (
                    f"not ready after {self.start_timeout_s:.0f} s"
                    if isinstance(exc, TimedOut)
                    else f"exit code {worker.proc.returncode}; its stderr is this process's"
                )
                raise RuntimeError(f"a validation worker did not start ({why})") from None
        sent = sum(len(data) for data, _ in items)
        deadline = time.monotonic() + self.timeout_s + sent / (1 << 20)
        try:
            outcomes = parse_answer(worker.ask(items, deadline), items)
        except MalformedAnswer as exc:
            self._drop(worker, f"answered malformed ({exc})")
            return [ArtifactError(MALFORMED) for _ in items]
        except Died:
            self._drop(worker, "died")
            raise _Lost("crashed") from None
        except TimedOut:
            self._drop(worker, f"timed out (deadline {deadline - time.monotonic():.0f} s)")
            raise _Lost("timed out") from None
        self._give_back(worker)
        return outcomes

    def _chunk(self, items: list[Item]) -> list[Outcome]:
        try:
            return self._ask(items)
        except _Lost:
            pass
        # An artifact in this chunk killed or stalled its worker: one at a time, to name it
        # (a chunk of one too: its worker may have died of something else).
        return [self._ask_alone(item) for item in items]

    def _ask_alone(self, item: Item) -> Outcome:
        try:
            (outcome,) = self._ask([item])
        except _Lost as exc:
            return ArtifactError(f"the validator {exc} loading this artifact")
        return outcome

    # -- on the event loop -----------------------------------------------------------------

    async def validate(self, items: Sequence[Item]) -> list[Outcome]:
        if not items:
            return []
        if self._closed:
            raise RuntimeError("the validation pool is closed")
        self._busy += 1
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        loop = asyncio.get_running_loop()
        try:
            parts = await asyncio.gather(
                *(
                    loop.run_in_executor(self._threads, self._chunk, [items[i] for i in r])
                    for r in _chunks(len(items), self.workers)
                )
            )
        finally:
            self._busy -= 1
            self._arm_idle()
        return [o for part in parts for o in part]

    def start(self) -> None:
        """Start the workers now, in the background, so that the first validation does not
        wait for them to import the runtimes. With a running event loop, they stop again
        after ``idle_s`` if nothing is validated."""
        if self._closed:
            raise RuntimeError("the validation pool is closed")
        for _ in range(self.workers):
            self._threads.submit(self._prestart)
        self._arm_idle()

    def _arm_idle(self) -> None:
        if self._busy or self.idle_s <= 0 or self._closed:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        self._idle_timer = loop.call_later(self.idle_s, self._stop_idle)

    def _stop_idle(self) -> None:
        """Stop the idle workers, without waiting for them (a request thread reaps them)."""
        self._idle_timer = None
        if self._busy or self._closed:
            return
        with self._lock:
            idle, self._idle = self._idle, []
            self._live.difference_update(idle)
            self._stopping.update(idle)
            held = bool(self._live)  # still held by a cancelled validation's threads
        for worker in idle:
            worker.signal(signal.SIGTERM)
        if idle:
            self._threads.submit(self._reap, idle)
            log.info("%d validation workers stopped after %.0f s idle", len(idle), self.idle_s)
        if held:
            self._arm_idle()

    def _reap(self, workers: list[WorkerProcess]) -> None:
        deadline = time.monotonic() + self.stop_s
        for worker in workers:
            worker.finish(deadline)
            with self._lock:
                self._stopping.discard(worker)

    def close(self) -> None:
        """Stop every worker (SIGTERM, SIGKILL after ``stop_s``) and reap it; requests in
        flight fail with ``RuntimeError``."""
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            everyone = self._live | self._stopping
            self._live.clear()
        for worker in everyone:
            worker.signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_s
        for worker in everyone:
            try:
                worker.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.signal(signal.SIGKILL)
                worker.proc.wait()
        for worker in idle:  # held ones are closed by the threads holding them
            worker.finish(deadline)
        self._threads.shutdown(wait=True, cancel_futures=True)
        for worker in self._stopping:  # reaps that were cancelled: close their pipes
            worker.finish(deadline)
        self._stopping.clear()
