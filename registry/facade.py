"""The registry as the control plane calls it: one object over the record store
(``registry.store``), registration (``registry.registration``, ``registry.bulk``) and artifact
garbage collection (``registry.gc``).

Reads, aliases, traffic splits, shadows and retention are thin here: each is one
compare-and-swap ``RecordStore.update`` applying a pure rule of ``registry.rules``. Retention
(``delete_versions``, or ``keep_versions`` after every registration) keeps the newest N
versions and never removes one an alias, the split or the shadow points to; records change
first and artifacts are deleted after (``ArtifactCollector``), so a failure in between leaves
garbage in the store, never a record without its artifact.

The constructor starts nothing: ``start()`` starts the validation workers ahead of the first
registration (else they start on first use); ``close()`` stops them.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence

from registry import bulk, rules
from registry.gc import ArtifactCollector, ArtifactGC
from registry.registration import Registered, RegisterSpec, Registration, validator
from registry.store import ModelPage, RecordStore, require
from registry.validation import Validator
from shoal.objstore import ObjectStore
from shoal.records import ModelRecord, ModelVersion
from shoal.state import StateStore


class Registry:
    """Registry operations over a state store and an object store (see module docstring).

    Validation runs on ``validate_processes`` worker processes (-1, the default: one per
    core, at most 4), or with ``validate_processes=0`` on ``validate_threads`` threads in
    this process (0: one per core, at most 4).
    """

    def __init__(
        self,
        state: StateStore,
        objects: ObjectStore,
        *,
        default_pools: Mapping[str, str] | None = None,
        max_artifact_bytes: int = 256 << 20,
        cas_retries: int = 8,
        artifact_gc: ArtifactGC = "cluster",
        keep_versions: int = 0,
        validate_processes: int = -1,
        validate_threads: int = 0,
        gc_batch: int = 4096,
        now: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        if keep_versions < 0:
            raise ValueError(f"keep_versions must be >= 0 (0: keep all), got {keep_versions}")
        self.records = RecordStore(state, cas_retries, rng)
        self.gc = ArtifactCollector(state, objects, artifact_gc, gc_batch)
        self._validation: Validator = validator(validate_processes, validate_threads)
        self.registration = Registration(
            self.records,
            objects,
            self.gc,
            self._validation,
            now,
            default_pools=default_pools,
            max_artifact_bytes=max_artifact_bytes,
            keep_versions=keep_versions,
        )

    @property
    def max_artifact_bytes(self) -> int:
        return self.registration.max_artifact_bytes

    @property
    def conflicts(self) -> int:
        """Lost compare-and-swaps (re-read and retried): a contention signal for metrics."""
        return self.records.conflicts

    @property
    def artifacts_deleted(self) -> int:
        """Artifacts deleted by retention since start."""
        return self.gc.deleted

    def start(self) -> None:
        """Start the validation workers now (in the background), not on first use."""
        self._validation.start()

    def close(self) -> None:
        """Stop the validation pool (its workers, or its threads)."""
        self._validation.close()

    # --- reads ----------------------------------------------------------------------------

    async def get(self, tenant: str, name: str) -> ModelRecord:
        return await self.records.get(tenant, name)

    async def list_models(
        self, tenant: str = "", page_size: int = 0, page_token: str = ""
    ) -> ModelPage:
        """One page of models in key order (``RecordStore.page``)."""
        return await self.records.page(tenant, page_size, page_token)

    # --- registration ---------------------------------------------------------------------

    async def register(self, spec: RegisterSpec, data: bytes) -> Registered:
        return await self.registration.register(spec, data)

    async def register_uri(self, spec: RegisterSpec, uri: str) -> Registered:
        """Register an object already in the store (a key, or a URL under the store's URL).

        The bytes are fetched, hashed (and checked against ``spec.sha256`` and, for a
        content-addressed key, against the digest in the key) and validated like uploads.
        """
        return await self.registration.register(spec, await self.registration.fetch(uri))

    async def register_many(
        self, items: Sequence[tuple[RegisterSpec, bytes | str]], concurrency: int = 16
    ) -> list[Registered | Exception]:
        """One outcome per (spec, bytes or store URI), in order (``registry.bulk``)."""
        return await bulk.register_many(self.registration, items, concurrency)

    # --- routing state --------------------------------------------------------------------

    async def set_alias(self, tenant: str, name: str, alias: str, version: int) -> ModelRecord:
        return await self.records.update(
            tenant, name, lambda r: rules.with_alias(require(r, tenant, name), alias, version)
        )

    async def delete_alias(self, tenant: str, name: str, alias: str) -> ModelRecord:
        return await self.records.update(
            tenant, name, lambda r: rules.without_alias(require(r, tenant, name), alias)
        )

    async def set_traffic(self, tenant: str, name: str, percent: Mapping[int, int]) -> ModelRecord:
        """Set the split (versions -> percent, summing to 100); an empty mapping clears it."""
        return await self.records.update(
            tenant, name, lambda r: rules.with_traffic(require(r, tenant, name), percent)
        )

    async def set_shadow(
        self, tenant: str, name: str, version: int | None, percent: float = 0.0
    ) -> ModelRecord:
        """Shadow ``percent`` of requests to ``version``; ``None`` clears the shadow."""
        return await self.records.update(
            tenant,
            name,
            lambda r: rules.with_shadow(require(r, tenant, name), version, percent),
        )

    # --- retention ------------------------------------------------------------------------

    async def delete_versions(
        self, tenant: str, name: str, keep_last: int
    ) -> tuple[list[int], ModelRecord]:
        """Retention: drop all but the newest ``keep_last`` unreferenced versions.

        Returns (deleted version numbers, the record after). Records go first, in one CAS;
        artifacts are deleted afterwards (``ArtifactCollector``).
        """
        doomed: list[ModelVersion] = []

        def mutate(current: ModelRecord | None) -> ModelRecord | None:
            record, dropped = rules.retain(require(current, tenant, name), keep_last)
            doomed[:] = dropped
            return record if dropped else None

        record = await self.records.update(tenant, name, mutate)
        self.gc.queue(record, doomed)
        await self.gc.flush()
        return [mv.version for mv in doomed], record

    async def flush_gc(self) -> int:
        """Delete the artifacts retention queued that no record names; how many went."""
        return await self.gc.flush()
