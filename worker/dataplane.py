"""The worker core: resolve a version, validate, get the model (cache or load), predict.

Works on plain types (``worker.types``); the gRPC servicer only translates. Order per request:

1. rows limit (``check_rows``: RESOURCE_EXHAUSTED, before any lookup);
2. resolve the version from the record cache, validate the inputs against its signature (a
   malformed request never triggers a load);
3. quarantine: a version whose predictions keep failing or hang is refused with its reason
   and end time (FAILED_PRECONDITION) without touching the runtime;
4. pin the model in the cache (hit) or load it (single flight; failures and hangs are
   contained by the loader); the pin keeps the cache from displacing it while in use;
5. predict — merged with concurrent requests when batching is on — under the model's
   concurrency bound (``ModelLimiter``: RESOURCE_EXHAUSTED naming the model when it is busy
   beyond its short queue) and through ``RuntimeCalls`` (prediction-thread gate, deadline
   check right before the runtime is entered, ``predict_timeout_s`` after which the call is
   abandoned and the version quarantined);
6. unpin.

Deadlines: ``deadline`` is the caller's gRPC deadline (monotonic seconds, propagated by the
router as the forwarded call's timeout). A request whose deadline passes while it waits — for
a busy model, in the batcher, for a prediction thread — is answered DEADLINE_EXCEEDED and its
prediction is not run (``shoal_worker_expired{stage}``).

Prediction failures: a runtime exception answers INTERNAL and counts against the version;
``quarantine_after`` consecutive failures quarantine it (``FailureMemory``: exponential
backoff, a success forgets). A hang (timeout) quarantines it at once, and for as long as the
stuck thread has not returned. Other models are unaffected.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import cast

import numpy as np

from shoal.frameworks import Model
from shoal.records import InvalidName, ModelVersion, split_model_name
from worker.batching import Batcher
from worker.cache import Entry, Tier, TieredCache
from worker.calls import Abandoned, RuntimeCalls
from worker.catalog import Catalog
from worker.convert import output_tensor
from worker.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    WorkerError,
)
from worker.faults import Faults
from worker.inline import InlinePolicy
from worker.limits import ModelLimiter, check_rows
from worker.loader import FailureMemory, Loader
from worker.metrics import WorkerMetrics
from worker.types import (
    InferRequest,
    InferResult,
    LoadOutcome,
    ModelId,
    ModelMeta,
    TensorMeta,
)
from worker.validate import check_inputs, select_outputs

log = logging.getLogger(__name__)


def _batchable(mv: ModelVersion) -> bool:
    """One input whose first dimension is the batch, and outputs batched the same way."""
    sig = mv.signature
    if len(sig.inputs) != 1 or not sig.inputs[0].shape or sig.inputs[0].shape[0] != -1:
        return False
    return all(o.shape and o.shape[0] == -1 for o in sig.outputs)


@dataclass(slots=True)
class Guards:
    """What stands between a request and a runtime (see the module docstring)."""

    calls: RuntimeCalls
    limiter: ModelLimiter
    quarantine: FailureMemory
    max_rows: int
    faults: Faults = field(default_factory=Faults)


class Dataplane:
    def __init__(
        self,
        catalog: Catalog,
        cache: TieredCache[ModelId, Model],
        loader: Loader,
        guards: Guards,
        metrics: WorkerMetrics,
        batcher: Batcher | None = None,
        now: Callable[[], float] = time.perf_counter,
        inline: InlinePolicy | None = None,
    ) -> None:
        self.catalog = catalog
        self.cache = cache
        self.loader = loader
        self.guards = guards
        self._metrics = metrics
        self._batcher = batcher
        self._now = now
        self._inline = inline
        m = metrics
        self._rejected_rows = m.child(m.rejected, "rows")
        self._rejected_busy = m.child(m.rejected, "concurrency")
        self._rejected_quarantine = m.child(m.rejected, "quarantine")
        self._expired_queue = m.child(m.expired, "queue")
        self._quarantines = m.child(m.quarantines, "predict")
        self._inline_calls = m.inline_predictions

    async def _resolve(self, model: str, version: str) -> tuple[ModelId, ModelVersion]:
        try:
            tenant, name = split_model_name(model)
        except InvalidName as exc:
            raise InvalidArgument(str(exc)) from None
        _rec, mv = await self.catalog.resolve(tenant, name, version)
        return ModelId(tenant, name, mv.version), mv

    async def _acquire(self, mid: ModelId, mv: ModelVersion) -> Entry[ModelId, Model]:
        """The model pinned in the cache, loading it on a miss."""
        entry = self.cache.acquire(mid)
        if entry is not None:
            self._metrics.child(self._metrics.hits, entry.tier.value).inc()
            return entry
        self._metrics.child(self._metrics.misses, "memory").inc()
        model = await self.loader.load(mid, mv)
        warm_s = getattr(model, "warm_s", None)
        if self._inline is not None and warm_s is not None:
            self._inline.seed(mid, warm_s)
        entry = self.cache.acquire(mid)
        if entry is None:
            # Displaced between admission and now (heavy pressure): serve from the object we
            # hold; a detached entry keeps the pin/unpin protocol uniform.
            entry = Entry(mid, model, model.nbytes, Tier.HOST, pins=1)
        return entry

    async def infer(self, req: InferRequest, deadline: float | None = None) -> InferResult:
        """Answer one request (see the module docstring); ``deadline`` in monotonic seconds."""
        g = self.guards
        try:
            check_rows(req.inputs, g.max_rows)
        except ResourceExhausted:
            self._rejected_rows.inc()
            raise
        mid, mv = await self._resolve(req.model, req.version)
        label = f"{req.model}:{mv.version}"
        arrays = check_inputs(label, mv.signature, req.inputs)
        wanted = select_outputs(mv.signature, req.outputs)
        quarantined = g.quarantine.check(mid)
        if quarantined is not None:
            self._rejected_quarantine.inc()
            raise quarantined
        entry = await self._acquire(mid, mv)
        try:
            model = entry.value
            assert model is not None
            if self._batcher is not None and _batchable(mv):
                outs = await self._batcher.predict(mid, model, arrays[0], deadline)
            else:
                outs = await self._predict(mid, model, arrays, deadline)
        finally:
            self.cache.release(entry)
        specs = mv.signature.outputs
        tensors = tuple(output_tensor(specs[i].name, outs[i]) for i in wanted if i < len(outs))
        return InferResult(req.model, mv.version, tensors, req.id)

    async def _predict(
        self, mid: ModelId, model: Model, arrays: list[np.ndarray], deadline: float | None
    ) -> list[np.ndarray]:
        """One runtime call under the model's concurrency bound, the pool's gate and timeout."""
        g = self.guards
        name = f"{mid.tenant}/{mid.name}"
        try:
            await g.limiter.acquire(name, deadline)
        except ResourceExhausted:
            self._rejected_busy.inc()
            raise
        except DeadlineExceeded:
            self._expired_queue.inc()
            raise
        try:
            rows = len(arrays[0]) if arrays and arrays[0].ndim else 1
            faults = g.faults.affects("predict", name)
            predict = g.faults.wrap("predict", name, partial(model.predict, arrays))
            inline = self._inline
            if (
                inline is not None
                and not faults
                and inline.eligible(mid, getattr(model, "bounded", False), arrays)
            ):
                return self._predict_inline(mid, predict, rows, deadline)
            observe = self._metrics.batch_rows.observe
            took = 0.0

            def call() -> list[np.ndarray]:  # on the pool thread, once it is sure to run
                nonlocal took
                observe(rows)
                started = time.thread_time()
                out = predict()
                took = time.thread_time() - started
                return out

            try:
                outs = await g.calls.run(mid, call, deadline)
            except WorkerError:  # not run (deadline passed, no thread): not the model's fault
                raise
            except Abandoned as exc:
                err = FailedPrecondition(f"{mid} is quarantined: a prediction hung ({exc})")
                if inline is not None:
                    inline.forget(mid)
                self._quarantine(mid, err, immediate=True)
                raise DeadlineExceeded(
                    f"{exc} (SHOAL_PREDICT_TIMEOUT_S) and was abandoned; {mid} is quarantined"
                ) from None
            except Exception as exc:
                raise self._failed(mid, exc) from None
            if inline is not None:
                inline.observe(mid, took)
            self._succeeded(mid)
            return outs
        finally:
            g.limiter.release(name)

    def _predict_inline(
        self,
        mid: ModelId,
        predict: Callable[[], list[np.ndarray]],
        rows: int,
        deadline: float | None,
    ) -> list[np.ndarray]:
        """A short prediction run on the event loop (``worker.inline``): no thread hand-off."""
        if deadline is not None and time.monotonic() > deadline:
            self._metrics.child(self._metrics.expired, "pool").inc()
            raise DeadlineExceeded(f"deadline passed before {mid} was run; not run")
        self._metrics.batch_rows.observe(rows)
        self._inline_calls.inc()
        started = time.thread_time()
        try:
            outs = predict()
        except Exception as exc:
            raise self._failed(mid, exc) from None
        assert self._inline is not None
        self._inline.observe(mid, time.thread_time() - started)
        self._succeeded(mid)
        return outs

    def _failed(self, mid: ModelId, exc: Exception) -> WorkerError:
        """A runtime exception: counts towards quarantine; the error to answer."""
        log.error("prediction of %s failed", mid, exc_info=exc)
        if self._inline is not None:
            self._inline.forget(mid)
        what = f"{type(exc).__name__}: {exc}"
        self._quarantine(
            mid, FailedPrecondition(f"{mid} is quarantined: its predictions fail ({what})")
        )
        return Internal(f"prediction of {mid} failed: {what}")

    def _succeeded(self, mid: ModelId) -> None:
        quarantine = self.guards.quarantine
        if len(quarantine):
            quarantine.clear(mid)

    def _quarantine(self, mid: ModelId, err: WorkerError, immediate: bool = False) -> None:
        delay = self.guards.quarantine.record(mid, err, immediate)
        if delay:
            self._quarantines.inc()
            log.error("%s quarantined for %.1fs: %s", mid, delay, err.message)

    async def run_batch(
        self, key: object, model: object, rows: np.ndarray, deadline: float | None
    ) -> list[np.ndarray]:
        """The batcher's runner: one merged runtime call, guarded like any prediction."""
        return await self._predict(cast(ModelId, key), cast(Model, model), [rows], deadline)

    async def model_ready(self, model: str, version: str) -> bool:
        """Whether the version is resident and not quarantined (never triggers a load)."""
        try:
            mid, _mv = await self._resolve(model, version)
        except NotFound:
            return False
        return mid in self.cache and self.guards.quarantine.check(mid) is None

    async def model_metadata(self, model: str, version: str) -> ModelMeta:
        try:
            tenant, name = split_model_name(model)
        except InvalidName as exc:
            raise InvalidArgument(str(exc)) from None
        rec, mv = await self.catalog.resolve(tenant, name, version)
        sig = mv.signature
        return ModelMeta(
            name=model,
            versions=tuple(str(v) for v in sorted(rec.versions)),
            platform=mv.format,
            inputs=tuple(TensorMeta(t.name, t.datatype, t.shape) for t in sig.inputs),
            outputs=tuple(TensorMeta(t.name, t.datatype, t.shape) for t in sig.outputs),
        )

    async def load(self, model: str, version: str) -> LoadOutcome:
        """Make a version resident (promotion warm-up); reports where and how long."""
        mid, mv = await self._resolve(model, version)
        was_resident = mid in self.cache
        started = self._now()
        entry = await self._acquire(mid, mv)
        self.cache.release(entry)
        return LoadOutcome(True, was_resident, entry.tier.value, self._now() - started)
