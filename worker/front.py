"""The Python side of the worker's native inference front (``shoal._native.WorkerFront``).

The front serves the Open Inference Protocol itself: a request for a resident version of a
tree model, named by number (what the router sends), is decoded, validated, batched and
predicted natively, with no Python. Python keeps the control, here:

* **Jobs.** Whatever the front does not answer itself comes here as a job: ModelInfer for a
  version not resident (or named by alias, or quarantined: the data plane resolves, loads and
  answers as before), ModelReady, ModelMetadata and ``shoal.v1.WorkerAdmin``. A thread takes
  jobs (the front's queue, GIL released while it waits) and hands each to the event loop.
  Concurrent misses for one version make one job; the front holds the others and serves them
  natively once the version is resident.
* **Records.** The catalog's records, while fresh (watched), are pushed to the front, which
  resolves aliases and the empty version by the same rule (``crate::resolve``); without a
  fresh record the request is Python's.
* **The table.** A version the data plane has in memory, whose model has a native booster
  (CPU XGBoost and LightGBM), is pushed to the front (``resident``); a cache event that moves
  it out of host memory, or a quarantine, removes it. Versions served natively are reported
  back (``take_touched``) and marked recently used in the cache, so its LRU sees them.
* **Outcomes.** A native prediction that fails or hangs comes back as an ``outcome`` job:
  the predictor's failure memory decides the quarantine as for Python predictions.
* **Metrics.** The front's counters are added to the worker's metrics under today's names
  when they are scraped (``sync``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from shoal import _native
from shoal.frameworks import Model
from shoal.pb import shoal_control_pb2 as cpb
from shoal.pb import shoal_inference_pb2 as pb
from shoal.records import ModelVersion
from worker.convert import (
    infer_response_to_proto,
    model_metadata_to_proto,
    parse_infer_request,
)
from worker.dataplane import Dataplane
from worker.errors import Code, WorkerError
from worker.metrics import WorkerMetrics
from worker.types import ModelId, Stats

log = logging.getLogger(__name__)

#: gRPC status numbers of the worker's codes.
GRPC_NUMBER: dict[Code, int] = {
    Code.OK: 0,
    Code.CANCELLED: 1,
    Code.INVALID_ARGUMENT: 3,
    Code.DEADLINE_EXCEEDED: 4,
    Code.NOT_FOUND: 5,
    Code.RESOURCE_EXHAUSTED: 8,
    Code.FAILED_PRECONDITION: 9,
    Code.INTERNAL: 13,
    Code.UNAVAILABLE: 14,
}

Handler = Callable[[bytes, float | None], Awaitable[bytes]]


class FrontBridge:
    """Answers the front's jobs and keeps its table in step (see the module docstring)."""

    def __init__(
        self,
        front: _native.WorkerFront,
        dp: Dataplane,
        metrics: WorkerMetrics,
        stats: Callable[[], Stats],
    ) -> None:
        self.front = front
        self._dp = dp
        self._metrics = metrics
        self._stats = stats
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._touch_task: asyncio.Task[None] | None = None
        self._seen: dict[str, float] = {}
        self._handlers: dict[str, Handler] = {
            "ModelInfer": self._infer,
            "ModelReady": self._model_ready,
            "ModelMetadata": self._model_metadata,
            "WorkerAdmin/LoadModel": self._load_model,
            "WorkerAdmin/Stats": self._worker_stats,
        }
        metrics.on_collect(self.sync)

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._take, name="shoal-front-jobs", daemon=True)
        self._thread.start()
        self._touch_task = self._loop.create_task(self._touch_loop())

    async def stop(self, grace: float) -> None:
        """Drain the front (jobs are answered meanwhile), then stop taking jobs."""
        await asyncio.to_thread(self.front.stop, grace)
        self._closed.set()
        if self._touch_task is not None:
            self._touch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._touch_task
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 2.0)
        for t in list(self._tasks):
            t.cancel()

    def _take(self) -> None:
        """On the jobs thread: hand each job to the loop."""
        loop = self._loop
        assert loop is not None
        while not self._closed.is_set():
            try:
                job = self.front.next_job(0.2)
            except Exception:  # never expected; keep taking jobs
                log.exception("taking a job from the front failed")
                continue
            if job is None:
                continue
            try:
                loop.call_soon_threadsafe(self._dispatch, job)
            except RuntimeError:  # the loop is closed: nobody can answer
                return

    def _dispatch(self, job: _native.FrontJob) -> None:
        if job.method == "outcome":
            self._outcome(job.payload)
            return
        task = asyncio.get_running_loop().create_task(self._answer(job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, job: _native.FrontJob) -> None:
        m = self._metrics
        method = job.method.removeprefix("WorkerAdmin/")
        started = time.perf_counter()
        code = Code.OK
        try:
            handler = self._handlers.get(job.method)
            if handler is None:
                code = Code.INTERNAL
                job.reply(12, f"Method not found: {job.method}")
                return
            remaining = job.time_remaining
            deadline = None if remaining is None else time.monotonic() + remaining
            work = handler(job.payload, deadline)
            if remaining is not None:
                body = await asyncio.wait_for(work, max(remaining, 0.0))
            else:
                body = await work
            job.reply(0, "", body)
        except WorkerError as exc:
            code = exc.code
            job.reply(GRPC_NUMBER[code], exc.message, None, exc.retry)
        except TimeoutError:
            code = Code.DEADLINE_EXCEEDED
            job.reply(4, "Deadline Exceeded")
        except asyncio.CancelledError:
            code = Code.CANCELLED
            with contextlib.suppress(RuntimeError):
                job.reply(1, "the worker is stopping")
            raise
        except Exception as exc:
            code = Code.INTERNAL
            log.exception("%s failed", method)
            job.reply(13, f"{type(exc).__name__}: {exc}")
        finally:
            m.child(m.requests, method, code.value).inc()
            m.child(m.latency, method).observe(time.perf_counter() - started)

    # --- handlers (the Python worker's, as servicer.py had them) --------------------------

    async def _infer(self, raw: bytes, deadline: float | None) -> bytes:
        result = await self._dp.infer(parse_infer_request(raw), deadline)
        return bytes(infer_response_to_proto(result).SerializeToString())

    async def _model_ready(self, raw: bytes, _deadline: float | None) -> bytes:
        req = pb.ModelReadyRequest.FromString(raw)
        ready = await self._dp.model_ready(req.name, req.version)
        return bytes(pb.ModelReadyResponse(ready=ready).SerializeToString())

    async def _model_metadata(self, raw: bytes, _deadline: float | None) -> bytes:
        req = pb.ModelMetadataRequest.FromString(raw)
        meta = await self._dp.model_metadata(req.name, req.version)
        return bytes(model_metadata_to_proto(meta).SerializeToString())

    async def _load_model(self, raw: bytes, _deadline: float | None) -> bytes:
        req = cpb.LoadModelRequest.FromString(raw)
        version = str(req.version) if req.version > 0 else ""
        out = await self._dp.load(f"{req.tenant}/{req.name}", version)
        return bytes(
            cpb.LoadModelResponse(
                loaded=out.loaded,
                was_resident=out.was_resident,
                tier=out.tier,
                load_seconds=out.load_seconds,
            ).SerializeToString()
        )

    async def _worker_stats(self, _raw: bytes, _deadline: float | None) -> bytes:
        return bytes(stats_to_proto(self._stats()).SerializeToString())

    # --- the table ------------------------------------------------------------------------

    def resident(self, mid: ModelId, mv: ModelVersion, model: Model) -> None:
        """The data plane has ``mid`` in memory: serve it natively if it can be."""
        booster = getattr(model, "native", None)
        if booster is None or model.device != "cpu":
            return
        name = f"{mid.tenant}/{mid.name}"
        if self.front.has_model(name, mid.version):
            return
        predictor = self._dp.predictor
        if predictor.check(mid) is not None or predictor.faulted(mid):
            return  # quarantined, or a fault drill: Python answers
        sig = mv.signature
        self.front.add_model(
            name,
            mid.version,
            booster,
            [(t.name, t.datatype, list(t.shape)) for t in sig.inputs],
            [(t.name, t.datatype, list(t.shape)) for t in sig.outputs],
            model.warm_s,
            bool(getattr(model, "bounded", True)),
        )

    def record(self, key: tuple[str, str] | None, value: bytes | None) -> None:
        """The catalog's record of ``key`` became fresh (its etcd value), or stopped being
        fresh (None); ``key`` None: every record did."""
        if key is None:
            self.front.clear_records()
            return
        try:
            self.front.set_record(f"{key[0]}/{key[1]}", value)
        except ValueError as exc:  # Python answers for it, with the catalog's own reading
            log.warning("the front cannot read the record of %s/%s: %s", *key, exc)

    def gone(self, mid: ModelId) -> None:
        """``mid`` left host memory (evicted, demoted) or was quarantined."""
        self.front.remove_model(f"{mid.tenant}/{mid.name}", mid.version)

    async def _touch_loop(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            self.touch()

    def touch(self) -> None:
        """Mark the versions served natively as recently used in the cache."""
        cache = self._dp.cache
        for name, version in self.front.take_touched():
            tenant, _, model = name.partition("/")
            cache.get(ModelId(tenant, model, version))

    def _outcome(self, payload: bytes) -> None:
        """A native prediction failed or hung: the failure memory decides the quarantine."""
        try:
            doc: dict[str, Any] = json.loads(payload)
            tenant, _, name = str(doc["model"]).partition("/")
            mid = ModelId(tenant, name, int(doc["version"]))
            kind, message, consecutive = str(doc["kind"]), str(doc["message"]), doc["consecutive"]
        except (ValueError, KeyError, TypeError):
            log.error("undecodable outcome from the front: %r", payload[:200])
            return
        self._dp.predictor.native_outcome(mid, kind, message, int(consecutive))
        if kind == "hung" or self._dp.predictor.check(mid) is not None:
            self.gone(mid)

    # --- metrics --------------------------------------------------------------------------

    def sync(self) -> None:
        """Add what the front counted since the last sync to the worker's metrics."""
        s = self.front.stats()
        m = self._metrics
        seen = self._seen
        # Every RPC enters through the front, those it hands to Python included.
        m.requests_in_flight.set(s["in_flight"])

        def delta(key: str, value: float) -> float:
            d = value - seen.get(key, 0.0)
            seen[key] = value
            return d

        served = 0.0
        for code, n in s["infer_codes"].items():
            d = delta(f"code:{code}", n)
            if d > 0:
                m.child(m.requests, "ModelInfer", code).inc(d)
                served += d
        if served:
            m.child(m.hits, "host").inc(served)
            m.native_requests.inc(served)
        for key, reason in (("rejected_rows", "rows"), ("rejected_busy", "concurrency")):
            d = delta(key, s[key])
            if d > 0:
                m.child(m.rejected, reason).inc(d)
        for key, stage in (
            ("expired_batch", "batch"),
            ("expired_queue", "queue"),
            ("expired_pool", "pool"),
        ):
            d = delta(key, s[key])
            if d > 0:
                m.child(m.expired, stage).inc(d)
        d = delta("inline", s["inline"])
        if d > 0:
            m.inline_predictions.inc(d)
        d = delta("abandoned", s["abandoned"])
        if d > 0:
            m.child(m.abandoned, "predict").inc(d)
        _add_histogram(m.child(m.latency, "ModelInfer"), s["infer_seconds"], seen, "latency")
        _add_histogram(m.batch_rows, s["batch_rows"], seen, "rows")


def stats_to_proto(s: Stats) -> cpb.WorkerStatus:
    return cpb.WorkerStatus(
        worker_id=s.worker_id,
        pool=s.pool,
        address=s.address,
        zone=s.zone,
        device=s.device,
        ready=s.ready,
        draining=s.draining,
        started_at=s.started_at,
        host_budget=s.budgets.get("host", 0),
        gpu_budget=s.budgets.get("gpu", 0),
        disk_budget=s.budgets.get("disk", 0),
        host_bytes=s.resident_bytes.get("host", 0),
        gpu_bytes=s.resident_bytes.get("gpu", 0),
        disk_bytes=s.resident_bytes.get("disk", 0),
        models_resident=s.models_resident,
        requests_per_s=s.requests_per_s,
        in_flight=s.in_flight,
        metrics_address=s.metrics_address,
    )


def _add_histogram(
    hist: Any, snapshot: tuple[list[int], float], seen: dict[str, float], key: str
) -> None:
    """Add a native histogram's growth to a prometheus_client histogram (same buckets)."""
    counts, total = snapshot
    buckets = hist._buckets  # prometheus_client keeps per-bucket (not cumulative) counts
    if len(buckets) != len(counts):
        return
    for i, n in enumerate(counts):
        d = n - seen.get(f"{key}:{i}", 0.0)
        if d > 0:
            seen[f"{key}:{i}"] = n
            buckets[i].inc(d)
    d = total - seen.get(f"{key}:sum", 0.0)
    if d > 0:
        seen[f"{key}:sum"] = total
        hist._sum.inc(d)
