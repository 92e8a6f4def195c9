"""The worker core: resolve a version, validate, get the model (cache or load), predict.

Works on plain types (``worker.types``); the gRPC servicer only translates. Order per request:
resolve the version from the record cache, validate the inputs against the version's signature
(a malformed request never triggers a load), pin the model in the cache (hit) or load it
(single flight), predict off the event loop — merged with concurrent requests when batching
is on — then unpin. The pin keeps the cache from displacing a model while a request uses it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor

import numpy as np

from shoal.records import InvalidName, ModelVersion, split_model_name
from worker.batching import Batcher
from worker.cache import Entry, Tier, TieredCache
from worker.catalog import Catalog
from worker.convert import output_tensor
from worker.errors import Internal, InvalidArgument, NotFound
from worker.loader import Loader
from worker.metrics import WorkerMetrics
from worker.runtimes import Model
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


class Dataplane:
    def __init__(
        self,
        catalog: Catalog,
        cache: TieredCache[ModelId, Model],
        loader: Loader,
        predict_executor: Executor,
        metrics: WorkerMetrics,
        batcher: Batcher | None = None,
        now: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.catalog = catalog
        self.cache = cache
        self.loader = loader
        self._executor = predict_executor
        self._metrics = metrics
        self._batcher = batcher
        self._now = now

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
        entry = self.cache.acquire(mid)
        if entry is None:
            # Displaced between admission and now (heavy pressure): serve from the object we
            # hold; a detached entry keeps the pin/unpin protocol uniform.
            entry = Entry(mid, model, model.nbytes, Tier.HOST, pins=1)
        return entry

    async def infer(self, req: InferRequest) -> InferResult:
        mid, mv = await self._resolve(req.model, req.version)
        label = f"{req.model}:{mv.version}"
        arrays = check_inputs(label, mv.signature, req.inputs)
        wanted = select_outputs(mv.signature, req.outputs)
        entry = await self._acquire(mid, mv)
        try:
            model = entry.value
            assert model is not None
            if self._batcher is not None and _batchable(mv):
                outs = await self._batcher.predict(mid, model, arrays[0])
            else:
                outs = await self._run(model, arrays)
        finally:
            self.cache.release(entry)
        specs = mv.signature.outputs
        tensors = tuple(output_tensor(specs[i].name, outs[i]) for i in wanted if i < len(outs))
        return InferResult(req.model, mv.version, tensors, req.id)

    async def _run(self, model: Model, arrays: list[np.ndarray]) -> list[np.ndarray]:
        loop = asyncio.get_running_loop()
        self._metrics.batch_rows.observe(len(arrays[0]) if arrays and arrays[0].ndim else 1)
        try:
            return await loop.run_in_executor(self._executor, model.predict, arrays)
        except Exception as exc:
            log.exception("prediction failed")
            raise Internal(f"prediction failed: {type(exc).__name__}: {exc}") from None

    async def run_batch(self, model: object, rows: np.ndarray) -> list[np.ndarray]:
        """The batcher's runner: one runtime call on the prediction pool."""
        m: Model = model  # type: ignore[assignment]
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, m.predict, [rows])
        except Exception as exc:
            log.exception("prediction failed")
            raise Internal(f"prediction failed: {type(exc).__name__}: {exc}") from None

    async def model_ready(self, model: str, version: str) -> bool:
        """Whether the version is resident in memory (never triggers a load)."""
        try:
            mid, _mv = await self._resolve(model, version)
        except NotFound:
            return False
        return mid in self.cache

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
