"""The model registry: versions, aliases, traffic splits and shadows, kept in etcd.

One key per model (``/shoal/models/<tenant>/<name>``, a ``ModelRecord``). Every write is a
read-modify-write guarded by a compare-and-swap on that key's ``mod_revision``; on a lost race
the record is re-read and the change re-applied, at most ``cas_retries`` times (with a short
random back-off), after which ``Aborted`` is raised. So two concurrent updates never silently
lose one: each either lands on top of the other or fails loudly.

Registration (``register``):

1. hash the bytes; if the model already has a version with that sha256, return it
   (``created=False``) and write nothing: re-running a registration is a no-op, and an alias
   that was moved since is *not* moved back;
2. validate the artifact by loading it (``shoal.artifacts.inspect_artifact``, off the loop);
3. upload it to its content address (a no-op when already there);
4. compare-and-swap the record: version number ``next_version``, the optional alias in the same
   write. Step 1 is repeated inside the CAS, so two concurrent registrations of the same bytes
   still make one version.

A crash between 3 and 4 leaves an unreferenced artifact, never a record pointing nowhere.
``register_many`` does steps 1-3 per item concurrently and step 4 for up to ``MAX_TXN_OPS``
models per etcd transaction (so bulk registration is not one round trip per model).

Retention (``delete_versions``) keeps the newest N versions and never removes one an alias,
the split or the shadow points to. Artifacts are content-addressed and so may be shared by
several models; with ``artifact_gc="cluster"`` (the default) an artifact is deleted only when no
model record anywhere still names its sha256 (one paged scan of ``/shoal/models/`` per call);
``"model"`` checks only the model being trimmed (cheap, unsafe when models share bytes);
``"off"`` never deletes artifacts. Limit: a registration of the same bytes for another model
that commits *during* the scan can still lose its artifact; re-registering it restores it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from placement import rules
from placement.errors import Aborted, InvalidArgument, NotFound, TooLarge
from shoal.artifacts import ArtifactInfo, inspect_artifact, sha256_hex
from shoal.objstore import ObjectStore, artifact_key
from shoal.records import (
    DEFAULT_POOL,
    MODELS,
    ModelRecord,
    ModelVersion,
    check_alias,
    check_ident,
    model_key,
)
from shoal.state import MAX_TXN_OPS, Compare, Put, StateStore, iter_prefix

log = logging.getLogger(__name__)

ArtifactGC = Literal["off", "model", "cluster"]

#: Page size bounds of ``list_models``.
DEFAULT_PAGE = 100
MAX_PAGE = 1000


@dataclass(frozen=True, slots=True)
class RegisterSpec:
    """What to register: the model, and optionally framework, pool, alias, labels, digest."""

    tenant: str
    name: str
    framework: str = ""  # "": detected from the bytes
    pool: str = ""  # "": the default pool of the framework
    alias: str = ""  # "": no alias
    labels: Mapping[str, str] = field(default_factory=dict)
    sha256: str = ""  # "": not checked; else the bytes must hash to it


@dataclass(frozen=True, slots=True)
class Registered:
    tenant: str
    name: str
    version: int
    created: bool  # False: an identical artifact was already registered
    sha256: str
    record: ModelRecord


@dataclass(frozen=True, slots=True)
class ModelPage:
    models: list[ModelRecord]
    next_page_token: str  # "": no more pages


class Registry:
    """Registry operations over a state store and an object store (see module docstring)."""

    def __init__(
        self,
        state: StateStore,
        objects: ObjectStore,
        *,
        default_pools: Mapping[str, str] | None = None,
        max_artifact_bytes: int = 256 << 20,
        cas_retries: int = 8,
        artifact_gc: ArtifactGC = "cluster",
        now: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self._state = state
        self._objects = objects
        self._default_pools = dict(default_pools or {})
        self.max_artifact_bytes = max_artifact_bytes
        self._retries = max(1, cas_retries)
        self._gc: ArtifactGC = artifact_gc
        self._now = now
        self._rng = rng or random.Random()
        #: Lost compare-and-swaps (re-read and retried): a contention signal for metrics.
        self.conflicts = 0

    # --- reads ----------------------------------------------------------------------------

    async def get(self, tenant: str, name: str) -> ModelRecord:
        record = await self._read(tenant, name)
        if record is None:
            raise NotFound(f"model {tenant}/{name} not found")
        return record

    async def list_models(
        self, tenant: str = "", page_size: int = 0, page_token: str = ""
    ) -> ModelPage:
        """One page of models in key order (all tenants, or one), ``page_size`` <= 1000.

        The page token is the last key returned; pages are read at the latest revision, so a
        model written between pages shows up if its key sorts after the token.
        """
        prefix = MODELS + (f"{check_ident('tenant', tenant)}/" if tenant else "")
        size = DEFAULT_PAGE if page_size <= 0 else min(page_size, MAX_PAGE)
        if page_token and not page_token.startswith(prefix):
            raise InvalidArgument(f"page token {page_token!r} does not belong to this listing")
        start = page_token + "\x00" if page_token else None
        page = await self._state.range(prefix, start=start, limit=size)
        models = [ModelRecord.decode(kv.value, kv.mod_revision) for kv in page.kvs]
        token = page.kvs[-1].key if page.more and page.kvs else ""
        return ModelPage(models, token)

    # --- registration ---------------------------------------------------------------------

    async def register(self, spec: RegisterSpec, data: bytes) -> Registered:
        """Register ``data`` as a new version (or find the identical one); see module doc."""
        tenant, name = self._check_spec(spec)
        ready = await self._prepare(spec, data, await self._read(tenant, name))
        if isinstance(ready, Registered):
            return ready
        return await self._commit(ready)

    async def register_uri(self, spec: RegisterSpec, uri: str) -> Registered:
        """Register an object already in the store (a key, or a URL under the store's URL).

        The bytes are fetched, hashed (and checked against ``spec.sha256`` and, for a
        content-addressed key, against the digest in the key) and validated like uploads.
        """
        return await self.register(spec, await self._fetch(uri))

    async def register_many(
        self, items: Sequence[tuple[RegisterSpec, bytes | str]], concurrency: int = 8
    ) -> list[Registered | Exception]:
        """Register a batch of (spec, bytes or store URI); one outcome per item, in order.

        1. read the record of each distinct model once (concurrently);
        2. hash, reuse-check, validate and upload each item, ``concurrency`` at a time;
        3. fold each model's new versions into its record (items in order, so two items with
           the same bytes make one version) and write the records in transactions of up to
           ``MAX_TXN_OPS`` models, each guarded by its own compare. When a transaction loses
           (another writer touched one of its models), its items are committed one by one
           with the usual retries instead.

        An item's failure (invalid artifact, store error) is its outcome; others go on.
        """
        out: list[Registered | Exception | None] = [None] * len(items)
        names: dict[int, tuple[str, str]] = {}
        for i, (spec, _) in enumerate(items):
            try:
                names[i] = self._check_spec(spec)
            except Exception as exc:
                out[i] = exc
        distinct = sorted(set(names.values()))
        current = await asyncio.gather(*(self._read(t, n) for t, n in distinct))
        records = dict(zip(distinct, current, strict=True))
        prepared: dict[int, _Prepared] = {}
        gate = asyncio.Semaphore(max(1, concurrency))

        async def prepare(i: int) -> None:
            spec, payload = items[i]
            async with gate:
                try:
                    data = payload if isinstance(payload, bytes) else await self._fetch(payload)
                    ready = await self._prepare(spec, data, records[names[i]])
                except Exception as exc:
                    out[i] = exc
                    return
            if isinstance(ready, Registered):
                out[i] = ready
            else:
                prepared[i] = ready

        await asyncio.gather(*(prepare(i) for i in names))
        by_model: dict[tuple[str, str], list[int]] = {}
        for i in sorted(prepared):
            by_model.setdefault(names[i], []).append(i)
        models = list(by_model)
        for lo in range(0, len(models), MAX_TXN_OPS):
            await self._commit_chunk(
                models[lo : lo + MAX_TXN_OPS], by_model, records, prepared, out
            )
        return [o if o is not None else RuntimeError("item not processed") for o in out]

    async def _commit_chunk(
        self,
        chunk: list[tuple[str, str]],
        by_model: dict[tuple[str, str], list[int]],
        records: dict[tuple[str, str], ModelRecord | None],
        prepared: dict[int, _Prepared],
        out: list[Registered | Exception | None],
    ) -> None:
        compares, puts = [], []
        staged: dict[tuple[str, str], tuple[ModelRecord, dict[int, tuple[int, bool]]]] = {}
        for m in chunk:
            old = records[m]
            record = old or ModelRecord(*m)
            outcomes: dict[int, tuple[int, bool]] = {}
            for i in by_model[m]:
                new, version, created = _add_version(record, prepared[i], self._now())
                outcomes[i] = (version, created)
                record = new or record
            staged[m] = (record, outcomes)
            key = model_key(*m)
            compares.append(Compare(key, old.mod_revision if old is not None else 0))
            puts.append(Put(key, record.encode()))
        try:
            res = await self._state.txn(compares, puts)
        except Exception as exc:
            for m in chunk:
                for i in by_model[m]:
                    out[i] = exc
            return
        if res.succeeded:
            for record, outcomes in staged.values():
                written = record.with_revision(res.revision)
                for i, (version, created) in outcomes.items():
                    p = prepared[i]
                    out[i] = Registered(p.tenant, p.name, version, created, p.info.sha256, written)
            return
        self.conflicts += 1
        for m in chunk:
            for i in by_model[m]:
                try:
                    out[i] = await self._commit(prepared[i])
                except Exception as exc:
                    out[i] = exc

    async def _fetch(self, uri: str) -> bytes:
        key = uri
        if key.startswith(self._objects.url.rstrip("/") + "/"):
            key = key[len(self._objects.url.rstrip("/")) + 1 :]
        if not key or "://" in key:
            raise InvalidArgument(f"{uri!r} is not a key in the object store {self._objects.url}")
        data = await self._objects.get(key)
        digest = sha256_hex(data)
        if key.startswith("artifacts/sha256/") and key.rsplit("/", 1)[-1] != digest:
            raise InvalidArgument(f"object {key} is corrupt: its bytes hash to {digest}")
        return data

    def _check_spec(self, spec: RegisterSpec) -> tuple[str, str]:
        tenant = check_ident("tenant", spec.tenant)
        name = check_ident("model name", spec.name)
        if spec.alias:
            check_alias(spec.alias)
        if spec.pool:
            check_ident("pool", spec.pool)
        for k, v in spec.labels.items():
            if not isinstance(k, str) or not isinstance(v, str) or not k:
                raise InvalidArgument(f"label {k!r}={v!r}: labels are non-empty string pairs")
        return tenant, name

    async def _prepare(
        self, spec: RegisterSpec, data: bytes, current: ModelRecord | None
    ) -> Registered | _Prepared:
        """Steps 1-3 of registration: the existing version, or a validated, uploaded one."""
        tenant, name = self._check_spec(spec)
        if len(data) > self.max_artifact_bytes:
            raise TooLarge(
                f"artifact is {len(data)} bytes, over the limit of {self.max_artifact_bytes}"
            )
        digest = sha256_hex(data)
        if spec.sha256 and spec.sha256.lower() != digest:
            raise InvalidArgument(f"artifact sha256 is {digest}, expected {spec.sha256}")
        if current is not None and (hit := _version_with_sha(current, digest)) is not None:
            return Registered(tenant, name, hit.version, False, digest, current)
        info = await asyncio.to_thread(inspect_artifact, data, spec.framework or None)
        pool = spec.pool or self._default_pools.get(info.framework) or DEFAULT_POOL
        check_ident("pool", pool)
        key, _ = await self._objects.put_artifact(digest, data)
        return _Prepared(spec, tenant, name, info, key, pool)

    async def _commit(self, p: _Prepared) -> Registered:
        """Step 4 of registration, alone: CAS the new version into the record (retried)."""
        outcome: list[tuple[int, bool]] = []

        def mutate(current: ModelRecord | None) -> ModelRecord | None:
            new, version, created = _add_version(
                current or ModelRecord(p.tenant, p.name), p, self._now()
            )
            outcome[:] = [(version, created)]
            return new

        record = await self._update(p.tenant, p.name, mutate)
        version, created = outcome[0]
        return Registered(p.tenant, p.name, version, created, p.info.sha256, record)

    # --- routing state --------------------------------------------------------------------

    async def set_alias(self, tenant: str, name: str, alias: str, version: int) -> ModelRecord:
        return await self._update(
            tenant, name, lambda r: rules.with_alias(self._exists(r, tenant, name), alias, version)
        )

    async def delete_alias(self, tenant: str, name: str, alias: str) -> ModelRecord:
        return await self._update(
            tenant, name, lambda r: rules.without_alias(self._exists(r, tenant, name), alias)
        )

    async def set_traffic(self, tenant: str, name: str, percent: Mapping[int, int]) -> ModelRecord:
        """Set the split (versions -> percent, summing to 100); an empty mapping clears it."""
        return await self._update(
            tenant, name, lambda r: rules.with_traffic(self._exists(r, tenant, name), percent)
        )

    async def set_shadow(
        self, tenant: str, name: str, version: int | None, percent: float = 0.0
    ) -> ModelRecord:
        """Shadow ``percent`` of requests to ``version``; ``None`` clears the shadow."""
        return await self._update(
            tenant,
            name,
            lambda r: rules.with_shadow(self._exists(r, tenant, name), version, percent),
        )

    async def delete_versions(
        self, tenant: str, name: str, keep_last: int
    ) -> tuple[list[int], ModelRecord]:
        """Retention: drop all but the newest ``keep_last`` unreferenced versions.

        Returns (deleted version numbers, the record after). Records go first, in one CAS;
        artifacts are deleted afterwards per ``artifact_gc`` (module docstring), so a failure
        there leaves garbage in the store, never a record without its artifact.
        """
        doomed: list[ModelVersion] = []

        def mutate(current: ModelRecord | None) -> ModelRecord | None:
            record = self._exists(current, tenant, name)
            victims = rules.retention_victims(record, keep_last)
            doomed[:] = [record.versions[v] for v in victims]
            if not victims:
                return None
            kept = {v: mv for v, mv in record.versions.items() if v not in victims}
            return replace(record, versions=kept)

        record = await self._update(tenant, name, mutate)
        await self._collect_artifacts(record, doomed)
        return [mv.version for mv in doomed], record

    async def _collect_artifacts(self, record: ModelRecord, doomed: list[ModelVersion]) -> None:
        if self._gc == "off" or not doomed:
            return
        candidates = {mv.sha256 for mv in doomed} - {mv.sha256 for mv in record.versions.values()}
        if self._gc == "cluster" and candidates:
            async for kv, _ in iter_prefix(self._state, MODELS):
                other = ModelRecord.decode(kv.value)
                candidates -= {mv.sha256 for mv in other.versions.values()}
                if not candidates:
                    break
        for sha in sorted(candidates):
            await self._objects.delete(artifact_key(sha))
            log.info("deleted artifact %s (no version references it)", sha)

    # --- compare-and-swap core ------------------------------------------------------------

    @staticmethod
    def _exists(record: ModelRecord | None, tenant: str, name: str) -> ModelRecord:
        if record is None:
            raise NotFound(f"model {tenant}/{name} not found")
        return record

    async def _read(self, tenant: str, name: str) -> ModelRecord | None:
        check_ident("tenant", tenant)
        check_ident("model name", name)
        kv = await self._state.get(model_key(tenant, name))
        return ModelRecord.decode(kv.value, kv.mod_revision) if kv is not None else None

    async def _update(
        self,
        tenant: str,
        name: str,
        mutate: Callable[[ModelRecord | None], ModelRecord | None],
    ) -> ModelRecord:
        """Read, ``mutate`` (None: nothing to write), compare-and-swap; retry on conflict.

        ``mutate`` may run several times and must be pure apart from resetting what it
        reports. Raises ``Aborted`` after ``cas_retries`` lost races.
        """
        key = model_key(check_ident("tenant", tenant), check_ident("model name", name))
        for attempt in range(self._retries):
            kv = await self._state.get(key)
            current = ModelRecord.decode(kv.value, kv.mod_revision) if kv is not None else None
            new = mutate(current)
            if new is None:
                return self._exists(current, tenant, name)
            expect = kv.mod_revision if kv is not None else 0
            res = await self._state.txn([Compare(key, expect)], [Put(key, new.encode())])
            if res.succeeded:
                return new.with_revision(res.revision)
            self.conflicts += 1
            # Jittered back-off so racing writers stop colliding in lock step.
            await asyncio.sleep(self._rng.uniform(0, 0.005 * (attempt + 1)))
        raise Aborted(
            f"model {tenant}/{name} was changed concurrently {self._retries} times in a row; "
            "retry the request"
        )


@dataclass(frozen=True, slots=True)
class _Prepared:
    """A validated, uploaded artifact waiting for its version record."""

    spec: RegisterSpec
    tenant: str
    name: str
    info: ArtifactInfo
    key: str
    pool: str


def _add_version(
    record: ModelRecord, p: _Prepared, now: float
) -> tuple[ModelRecord | None, int, bool]:
    """(new record or None when unchanged, version, created): reuse a version with the same
    sha256, else append ``next_version`` (and point the alias at it, if one was asked for)."""
    hit = _version_with_sha(record, p.info.sha256)
    if hit is not None:
        return None, hit.version, False
    number = record.next_version
    version = ModelVersion(
        version=number,
        uri=p.key,
        framework=p.info.framework,
        format=p.info.format,
        pool=p.pool,
        sha256=p.info.sha256,
        size=p.info.size,
        signature=p.info.signature,
        created_at=now,
        labels=dict(p.spec.labels),
    )
    aliases = {**record.aliases, p.spec.alias: number} if p.spec.alias else record.aliases
    new = replace(
        record,
        versions={**record.versions, number: version},
        aliases=aliases,
        next_version=number + 1,
    )
    return new, number, True


def _version_with_sha(record: ModelRecord, sha256: str) -> ModelVersion | None:
    for mv in record.versions.values():
        if mv.sha256 == sha256:
            return mv
    return None
