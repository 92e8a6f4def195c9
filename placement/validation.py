"""Artifact validation off the event loop: a pool of processes, or a pool of threads.

``inspect_artifact`` loads each artifact with its runtime (XGBoost, LightGBM, ONNX Runtime).
Much of a small model's load is Python (the runtimes' ctypes wrappers, JSON parsing), so on
threads it holds the placement process's GIL and stalls the event loop that serves the
control plane, etcd and the object store. ``ProcessValidator`` therefore runs it in a pool
of *spawned* worker processes (never forked from a process running grpc and tokio threads);
``ThreadValidator`` keeps it in-process, for small deployments where two more interpreters
with the runtimes imported (~200 MiB each) cost more than they save.

Both take a batch and answer one outcome per item, in order: an ``ArtifactInfo`` or the
exception ``inspect_artifact`` raised. A batch is split into a few chunks, one pool task each,
so the hand-off costs per chunk, not per artifact; at most ``workers`` loads run at once.

What crosses the process boundary: the artifact's bytes and framework going in; plain tuples
of strings, numbers and dicts of them coming back (never a model object, never a pickle of
anything the artifact built). The worker hashes the bytes it received and the parent checks
that digest against its own, so a mix-up or corruption in between cannot validate the wrong
bytes.

Failure modes: an artifact that kills its worker (a crash in a runtime's native loader)
breaks the pool; the pool is replaced and the items of every chunk that was on it are retried
one at a time on a separate one-worker pool, so the culprit alone gets ``ArtifactError`` ("the
validator crashed ...") and the others their real outcome. ``close()`` stops the workers
(waiting for loads already running); validating afterwards raises ``RuntimeError``.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Protocol

from shoal.artifacts import ArtifactError, ArtifactInfo, Signature, inspect_artifact

log = logging.getLogger(__name__)

#: (artifact bytes, framework asked for or "").
Item = tuple[bytes, str]
Outcome = ArtifactInfo | Exception
Inspect = Callable[[bytes, str], ArtifactInfo]

#: Most artifacts in one pool task: few enough that one batch still spreads over the workers.
CHUNK = 32


class Validator(Protocol):
    """Validates batches of artifacts off the event loop (see module docstring)."""

    async def validate(self, items: Sequence[Item]) -> list[Outcome]: ...

    def close(self) -> None: ...


def _chunks(n: int, workers: int) -> list[range]:
    """Split ``range(n)`` into at least ``workers`` (when n allows) chunks of <= ``CHUNK``."""
    count = max(min(workers, n), -(-n // CHUNK), 1)
    size = -(-n // count)
    return [range(lo, min(lo + size, n)) for lo in range(0, n, size)]


def limit_native_threads() -> None:
    """One native thread per load, in a validation thread or process.

    XGBoost loads with its (thread-local) global ``nthread``, which defaults to every core:
    waking an OpenMP team per tiny model made a validation cost ~4 ms instead of ~1 ms. The
    pool already runs loads in parallel, so one thread each is the right width.
    """
    try:
        import xgboost

        xgboost.set_config(nthread=1)
    except Exception:  # validation still works, only slower
        log.debug("could not limit XGBoost threads in the validation pool", exc_info=True)


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

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


# --- the process pool -----------------------------------------------------------------------

#: What a worker answers per item: ("ok", framework, format, sha256, size, signature dict,
#: details dict) or ("invalid", message) or ("error", exception type name, message).
Wire = tuple[Any, ...]


def _worker_init() -> None:
    """Runs first in each worker: exit with the parent; one OpenMP thread per load.

    A worker holds both ends of its task queue, so it would not notice the parent's death
    (SIGKILL, OOM) by the queue; it watches the parent's sentinel on a thread instead.
    """
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(
            target=_exit_with, args=(parent,), name="shoal-validate-parent", daemon=True
        ).start()
    os.environ["OMP_NUM_THREADS"] = "1"  # read by the runtimes' OpenMP when they load
    limit_native_threads()


def _exit_with(parent: multiprocessing.process.BaseProcess) -> None:
    parent.join()
    os._exit(1)


def _validate_in_worker(items: list[Item]) -> list[Wire]:
    """The task a worker runs: ``inspect_artifact`` per item, answered as plain tuples."""
    out: list[Wire] = []
    for data, framework in items:
        try:
            info = inspect_artifact(data, framework or None)
        except ArtifactError as exc:
            out.append(("invalid", str(exc)))
        except Exception as exc:
            out.append(("error", type(exc).__name__, str(exc)))
        else:
            sig = info.signature.to_dict()
            out.append(
                ("ok", info.framework, info.format, info.sha256, info.size, sig, info.details)
            )
    return out


def _from_wire(w: Wire, data: bytes) -> Outcome:
    if w[0] == "invalid":
        return ArtifactError(w[1])
    if w[0] == "error":
        return RuntimeError(f"artifact validation failed: {w[1]}: {w[2]}")
    _, framework, fmt, sha256, size, sig, details = w
    info = ArtifactInfo(framework, fmt, sha256, size, Signature.from_dict(sig), details)
    if size != len(data):
        return RuntimeError(f"the validator saw {size} bytes, not the {len(data)} sent")
    return info


class ProcessValidator:
    """``inspect_artifact`` in a pool of ``processes`` spawned worker processes.

    The workers start on first use (each imports the runtimes it meets once, ~1-2 s, and then
    holds ~150 MiB), not in the constructor. They stop after ``idle_s`` seconds without a
    validation (registration comes in bursts; the next one starts them again) and in
    ``close()``. A second, one-worker pool isolates suspects after a crash: they are retried
    there one at a time, so a crash there names its culprit.
    """

    def __init__(
        self,
        processes: int,
        task: Callable[[list[Item]], list[Wire]] | None = None,
        idle_s: float = 300.0,
    ) -> None:
        self.workers = max(1, processes)
        self.idle_s = idle_s
        self._busy = 0
        self._idle_timer: asyncio.TimerHandle | None = None
        #: What a worker runs per chunk: a module-level function (it is named, not pickled,
        #: to the worker). Tests substitute one.
        self._task = task or _validate_in_worker
        self._lock = threading.Lock()
        self._pools: dict[str, ProcessPoolExecutor] = {}
        self._closed = False
        self._isolating: asyncio.Lock | None = None
        #: Pools replaced after a worker died (a crash while loading an artifact).
        self.restarts = 0

    def _executor(self, kind: str) -> ProcessPoolExecutor:
        with self._lock:
            if self._closed:
                raise RuntimeError("the validation pool is closed")
            pool = self._pools.get(kind)
            if pool is None:
                pool = self._pools[kind] = ProcessPoolExecutor(
                    self.workers if kind == "main" else 1,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_worker_init,
                )
            return pool

    async def _submit(self, kind: str, items: list[Item]) -> list[Wire] | None:
        """One task on pool ``kind``; None when the pool broke under it (and was dropped)."""
        pool = self._executor(kind)
        try:
            return await asyncio.wrap_future(pool.submit(self._task, items))
        except BrokenProcessPool:
            with self._lock:
                if self._pools.get(kind) is pool:
                    del self._pools[kind]
                    self.restarts += 1
                    log.warning("a validation worker died; its pool is restarted")
            pool.shutdown(wait=False, cancel_futures=True)
            return None

    async def _isolate(self, item: Item) -> Wire:
        """Validate ``item`` alone on the one-worker pool (one suspect at a time)."""
        if self._isolating is None:
            self._isolating = asyncio.Lock()
        async with self._isolating:
            one = await self._submit("isolate", [item])
        return ("invalid", "the validator crashed loading this artifact") if one is None else one[0]

    async def _chunk(self, items: list[Item]) -> list[Outcome]:
        wire = await self._submit("main", items)
        if wire is None:
            # An artifact in this chunk, or in another one on the same pool, killed a worker.
            wire = [await self._isolate(item) for item in items]
        return [_from_wire(w, item[0]) for w, item in zip(wire, items, strict=True)]

    async def validate(self, items: Sequence[Item]) -> list[Outcome]:
        if not items:
            return []
        self._busy += 1
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        try:
            parts = await asyncio.gather(
                *(self._chunk([items[i] for i in r]) for r in _chunks(len(items), self.workers))
            )
        finally:
            self._busy -= 1
            if self._busy == 0 and self.idle_s > 0 and not self._closed:
                self._idle_timer = asyncio.get_running_loop().call_later(
                    self.idle_s, self._stop_idle
                )
        return [o for part in parts for o in part]

    def _stop_idle(self) -> None:
        """Stop the workers (without waiting for them) when nothing is being validated."""
        self._idle_timer = None
        if self._busy:
            return
        with self._lock:
            pools = list(self._pools.values())
            self._pools.clear()
        for pool in pools:
            pool.shutdown(wait=False)
        if pools:
            log.info("validation workers stopped after %.0f s idle", self.idle_s)

    def close(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        with self._lock:
            self._closed = True
            pools = list(self._pools.values())
            self._pools.clear()
        for pool in pools:
            pool.shutdown(wait=True, cancel_futures=True)
