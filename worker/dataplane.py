"""The worker core: resolve a version, validate, get the model (cache or load), predict.

Works on plain types (``worker.types``); the gRPC servicer only translates. Order per request:

1. rows limit (``check_rows``: RESOURCE_EXHAUSTED, before any lookup);
2. resolve the version from the record cache, validate the inputs against its signature (a
   malformed request never triggers a load);
3. quarantine: a version whose predictions keep failing or hang is refused with its reason
   and end time (FAILED_PRECONDITION) without touching the runtime;
4. pin the model in the cache (hit) or load it (single flight; failures and hangs are
   contained by the loader); the pin keeps the cache from displacing it while in use;
5. predict — merged with concurrent requests by the ``Batcher`` when batching is on — through
   the ``Predictor`` (the model's concurrency bound, the prediction-thread gate or the event
   loop, the timeout, and the failure bookkeeping that quarantines a version);
6. unpin.

Deadlines: ``deadline`` is the caller's gRPC deadline (monotonic seconds, propagated by the
router as the forwarded call's timeout). A request whose deadline passes while it waits — for
a busy model, in the batcher, for a prediction thread — is answered DEADLINE_EXCEEDED and its
prediction is not run (``shoal_worker_expired{stage}``).

The object graph is built in one direction: ``Predictor``, then the ``Batcher`` that runs
merged calls through it, then this data plane over both.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from shoal.frameworks import Model
from shoal.records import InvalidName, ModelVersion, split_model_name
from worker.batching import Batcher
from worker.cache import Entry, Tier, TieredCache
from worker.catalog import Catalog
from worker.convert import output_tensor
from worker.errors import InvalidArgument, NotFound, ResourceExhausted
from worker.limits import check_rows
from worker.loader import Loader
from worker.metrics import WorkerMetrics
from worker.predictor import Predictor
from worker.types import (
    InferRequest,
    InferResult,
    LoadOutcome,
    ModelId,
    ModelMeta,
    TensorMeta,
)
from worker.validate import check_inputs, select_outputs


def _batchable(mv: ModelVersion) -> bool:
    """One input whose first dimension is the batch, and outputs batched the same way."""
    sig = mv.signature
    if len(sig.inputs) != 1 or not sig.inputs[0].shape or sig.inputs[0].shape[0] != -1:
        return False
    return all(o.shape and o.shape[0] == -1 for o in sig.outputs)


class Dataplane:
    def __init__(
        self,
        catalog: Catalog,
        cache: TieredCache[ModelId, Model],
        loader: Loader,
        predictor: Predictor,
        metrics: WorkerMetrics,
        max_rows: int,
        batcher: Batcher | None = None,
        now: Callable[[], float] = time.perf_counter,
        on_resident: Callable[[ModelId, ModelVersion, Model], None] | None = None,
        before_load: Callable[[], None] | None = None,
    ) -> None:
        self.catalog = catalog
        self.cache = cache
        self.loader = loader
        self.predictor = predictor
        self.max_rows = max_rows
        self._metrics = metrics
        self._batcher = batcher
        self._now = now
        #: Told of every version found or made resident here (the native front serves it).
        self.on_resident = on_resident
        #: Called before a load makes room in the cache (the native front's recency first).
        self.before_load = before_load
        m = metrics
        self._rejected_rows = m.child(m.rejected, "rows")
        self._rejected_quarantine = m.child(m.rejected, "quarantine")

    async def _resolve(self, model: str, version: str) -> tuple[ModelId, ModelVersion]:
        try:
            tenant, name = split_model_name(model)
        except InvalidName as exc:
            raise InvalidArgument(str(exc)) from None
        _rec, mv = await self.catalog.resolve(tenant, name, version)
        return ModelId(tenant, name, mv.version), mv

    async def _acquire(
        self, mid: ModelId, mv: ModelVersion, count: bool = True
    ) -> Entry[ModelId, Model]:
        """The model pinned in the cache, loading it on a miss (``count``: a request's hit or
        miss, for the metrics; a preload is not one)."""
        entry = self.cache.acquire(mid)
        if entry is not None:
            if count:
                self._metrics.child(self._metrics.hits, entry.tier.value).inc()
            return entry
        if count:
            self._metrics.child(self._metrics.misses, "memory").inc()
        if self.before_load is not None:
            self.before_load()
        model = await self.loader.load(mid, mv)
        self.predictor.loaded(mid, model)
        entry = self.cache.pin(mid)
        if entry is None:
            # Displaced between admission and now (heavy pressure): serve from the object we
            # hold; a detached entry keeps the pin/unpin protocol uniform.
            entry = Entry(mid, model, model.nbytes, Tier.HOST, pins=1)
        return entry

    async def infer(self, req: InferRequest, deadline: float | None = None) -> InferResult:
        """Answer one request (see the module docstring); ``deadline`` in monotonic seconds."""
        try:
            check_rows(req.inputs, self.max_rows)
        except ResourceExhausted:
            self._rejected_rows.inc()
            raise
        mid, mv = await self._resolve(req.model, req.version)
        label = f"{req.model}:{mv.version}"
        arrays = check_inputs(label, mv.signature, req.inputs)
        wanted = select_outputs(mv.signature, req.outputs)
        quarantined = self.predictor.check(mid)
        if quarantined is not None:
            self._rejected_quarantine.inc()
            raise quarantined
        entry = await self._acquire(mid, mv)
        try:
            model = entry.value
            assert model is not None
            if self.on_resident is not None:
                self.on_resident(mid, mv, model)
            if self._batcher is not None and _batchable(mv):
                outs = await self._batcher.predict(mid, model, arrays[0], deadline)
            else:
                outs = await self.predictor.predict(mid, model, arrays, deadline)
        finally:
            self.cache.release(entry)
        specs = mv.signature.outputs
        tensors = tuple(output_tensor(specs[i].name, outs[i]) for i in wanted if i < len(outs))
        return InferResult(req.model, mv.version, tensors, req.id)

    async def model_ready(self, model: str, version: str) -> bool:
        """Whether the version is resident and not quarantined (never triggers a load)."""
        try:
            mid, _mv = await self._resolve(model, version)
        except NotFound:
            return False
        return mid in self.cache and self.predictor.check(mid) is None

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

    async def warm(self, mid: ModelId, mv: ModelVersion) -> Entry[ModelId, Model]:
        """Make a version resident without a request (a preload or a pin): the entry comes
        back acquired; the caller releases it (or keeps it, to pin)."""
        entry = await self._acquire(mid, mv, count=False)
        if self.on_resident is not None and entry.value is not None:
            self.on_resident(mid, mv, entry.value)
        return entry

    async def load(self, model: str, version: str) -> LoadOutcome:
        """Make a version resident (promotion warm-up); reports where and how long."""
        mid, mv = await self._resolve(model, version)
        was_resident = mid in self.cache
        started = self._now()
        entry = await self._acquire(mid, mv)
        if self.on_resident is not None and entry.value is not None:
            self.on_resident(mid, mv, entry.value)
        self.cache.release(entry)
        return LoadOutcome(True, was_resident, entry.tier.value, self._now() - started)
