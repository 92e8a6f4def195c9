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
2. validate the artifact by loading it (``shoal.frameworks.inspect_artifact``) in the
   registry's validation pool (``placement.validation``): worker processes by default
   (``validate_processes``), or threads in this process (``validate_threads``); never on
   the event loop, never more loads at once than the pool has workers. Results are cached by
   sha256, so the same bytes registered for many models are loaded once;
3. upload it to its content address (content-addressed, so idempotent: small artifacts are
   written blindly, one round trip; large ones only when ``head`` does not find them);
4. compare-and-swap the record: version number ``next_version``, the optional alias in the same
   write, and (with ``keep_versions`` > 0) the retention pass in the same write too. Step 1 is
   repeated inside the CAS, so two concurrent registrations of the same bytes still make one
   version.

A crash between 3 and 4 leaves an unreferenced artifact, never a record pointing nowhere: a
record only ever names an artifact that was uploaded and validated before the record was
written. ``register_many`` does each step for a whole batch at once (one read of the batch's
records, one call to the validation pool, concurrent uploads) and step 4 for many models per
etcd transaction: at most ``MAX_TXN_OPS`` (128) models and ``MAX_TXN_BYTES`` of records per
transaction, below etcd's defaults (``--max-txn-ops`` 128, ``--max-request-bytes`` 1.5 MiB),
so bulk registration is not one round trip per model.

Retention keeps the newest N versions and never removes one an alias, the split or the shadow
points to (``rules.retention_victims``). It runs explicitly (``delete_versions``) or after every
registration when ``keep_versions`` > 0. Records change first; artifacts are deleted after, so a
failure in between leaves garbage in the store, never a record without its artifact.
Artifacts are content-addressed and so may be shared by several models; with
``artifact_gc="cluster"`` (the default) an artifact is deleted only when no model record
anywhere still names its sha256 (one paged scan of ``/shoal/models/``, reading digests out of
the raw JSON without decoding records); ``"model"`` checks only the model being trimmed
(cheap, unsafe when models share bytes); ``"off"`` never deletes artifacts. Retention run by
registration queues its candidates and scans once per ``gc_batch`` of them (or when
``flush_gc`` is called, e.g. at the end of a bulk stream), so 100K registrations do not mean
100K scans. An artifact that a registration in this process is preparing or committing, or
prepared while the scan ran, is never deleted. Limit: a registration through *another*
placement instance that commits the same bytes during the scan can still lose its artifact;
re-registering it restores it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, TypeVar

from placement import rules
from placement.errors import Aborted, InvalidArgument, NotFound, TooLarge
from placement.validation import ProcessValidator, ThreadValidator, Validator
from shoal.artifacts import ArtifactInfo, sha256_hex
from shoal.frameworks import inspect_artifact
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
K = TypeVar("K")

#: Page size bounds of ``list_models``.
DEFAULT_PAGE = 100
MAX_PAGE = 1000

#: Most record bytes in one registration transaction. etcd refuses requests over
#: ``--max-request-bytes`` (1.5 MiB by default); keys, compares and framing need the rest.
MAX_TXN_BYTES = 1 << 20
#: Largest single model record the registry writes (a record that grows past it, with
#: thousands of versions, must be pruned: ``keep_versions`` / ``delete_versions``).
MAX_RECORD_BYTES = MAX_TXN_BYTES
#: Artifacts at most this large are hashed on the event loop (~30 µs); larger ones on threads.
_INLINE_HASH_BYTES = 64 << 10
#: Artifacts at most this large are uploaded without asking the store first whether they are
#: there: for small objects a (content-addressed, idempotent) overwrite costs one round trip
#: where head-then-put costs two.
_BLIND_PUT_BYTES = 256 << 10
#: Validated artifacts remembered by sha256 (the same bytes registered for many models).
_INFO_CACHE = 4096
#: ``"sha256":"<hex>"`` as ``ModelRecord.encode`` writes it (compact JSON): the GC scan finds
#: digests in raw values without decoding. A label that happens to look the same only keeps an
#: artifact alive, never deletes one.
_SHA_FIELD = re.compile(rb'"sha256":"([0-9a-f]{64})"')


def _inspect(data: bytes, framework: str) -> ArtifactInfo:
    """In-process validation (``ThreadValidator``); looked up at call time, so tests can
    substitute ``inspect_artifact`` here."""
    return inspect_artifact(data, framework or None)


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
    pruned: tuple[int, ...] = ()  # versions this write removed by retention (keep_versions)


@dataclass(frozen=True, slots=True)
class ModelPage:
    models: list[ModelRecord]
    next_page_token: str  # "": no more pages


@dataclass(slots=True)
class _Staged:
    """One model's record as a bulk commit will write it, and what each item gets."""

    key: str
    expect: int  # mod_revision compared (0: must not exist)
    record: ModelRecord
    value: bytes
    outcomes: dict[int, tuple[int, bool]]  # item index -> (version, created)
    pruned: list[ModelVersion]


class Registry:
    """Registry operations over a state store and an object store (see module docstring).

    Validation runs on ``validate_processes`` worker processes (-1, the default: one per
    core, at most 4), or with ``validate_processes=0`` on ``validate_threads`` threads in
    this process (0: one per core, at most 4; small deployments: no extra interpreters).
    The constructor starts nothing: ``start()`` starts the validation workers ahead of the
    first registration (else they start on first use); ``close()`` stops them.
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
        self._state = state
        self._objects = objects
        self._default_pools = dict(default_pools or {})
        self.max_artifact_bytes = max_artifact_bytes
        self._retries = max(1, cas_retries)
        self._gc: ArtifactGC = artifact_gc
        self.keep_versions = keep_versions
        self._gc_batch = max(1, gc_batch)
        self._now = now
        self._rng = rng or random.Random()
        cores = min(4, os.cpu_count() or 1)
        self._validator: Validator = (
            ThreadValidator(validate_threads if validate_threads > 0 else cores, _inspect)
            if validate_processes == 0
            else ProcessValidator(validate_processes if validate_processes > 0 else cores)
        )
        self._infos: OrderedDict[str, ArtifactInfo] = OrderedDict()
        #: sha256 -> registrations between upload and commit (never garbage-collected).
        self._inflight: Counter[str] = Counter()
        #: One set per running GC scan: digests prepared while it runs (never collected).
        self._gc_watch: list[set[str]] = []
        self._gc_pending: set[str] = set()
        #: Lost compare-and-swaps (re-read and retried): a contention signal for metrics.
        self.conflicts = 0
        #: Artifacts deleted by retention since start.
        self.artifacts_deleted = 0

    def start(self) -> None:
        """Start the validation workers now (in the background), not on first use."""
        self._validator.start()

    def close(self) -> None:
        """Stop the validation pool (its workers, or its threads)."""
        self._validator.close()

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
        model written between pages shows up if its key sorts after the token. Memory per call
        is one page, whatever the number of models.
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
        try:
            result = await self._commit(ready)
        finally:
            self._release(ready)
        await self.flush_gc()
        return result

    async def register_uri(self, spec: RegisterSpec, uri: str) -> Registered:
        """Register an object already in the store (a key, or a URL under the store's URL).

        The bytes are fetched, hashed (and checked against ``spec.sha256`` and, for a
        content-addressed key, against the digest in the key) and validated like uploads.
        """
        return await self.register(spec, await self._fetch(uri))

    async def register_many(
        self, items: Sequence[tuple[RegisterSpec, bytes | str]], concurrency: int = 16
    ) -> list[Registered | Exception]:
        """Register a batch of (spec, bytes or store URI); one outcome per item, in order.

        1. read the records of the batch's distinct models (one read-only etcd transaction per
           ``MAX_TXN_OPS`` models);
        2. fetch URI items (``concurrency`` at a time), hash every item and drop those whose
           model already has that sha256 (``created=False``, nothing written);
        3. validate the rest in one call to the validation pool (items with the same bytes
           and framework once; bytes validated before come from the cache);
        4. upload each distinct artifact (``concurrency`` at a time);
        5. fold each model's new versions into its record (items in order, so two items with
           the same bytes make one version), apply retention (``keep_versions``), and write
           the records in transactions of up to ``MAX_TXN_OPS`` models and ``MAX_TXN_BYTES``,
           each model guarded by its own compare. When a transaction loses (another writer
           touched one of its models), its items are committed one by one with the usual
           retries instead.

        An item's failure (invalid artifact, store error) is its outcome; others go on. If
        the caller is cancelled midway, each transaction has either landed whole or not at
        all, and every record written names an uploaded, validated artifact.
        """
        out: list[Registered | Exception | None] = [None] * len(items)
        names: dict[int, tuple[str, str]] = {}
        for i, (spec, _) in enumerate(items):
            try:
                names[i] = self._check_spec(spec)
            except Exception as exc:
                out[i] = exc
        records = await self._read_many(sorted(set(names.values())))
        datas = await self._payloads(items, names, out, concurrency)
        digests = await self._digests(items, datas, out)
        fresh: list[int] = []
        for i, digest in digests.items():
            current = records[names[i]]
            if current is not None and (hit := _version_with_sha(current, digest)) is not None:
                out[i] = Registered(*names[i], hit.version, False, digest, current)
            else:
                fresh.append(i)
        infos = await self._validate_many(
            [(datas[i], digests[i], items[i][0].framework) for i in fresh]
        )
        prepared: dict[int, _Prepared] = {}
        try:
            uploads: dict[str, list[int]] = {}
            for i, info in zip(fresh, infos, strict=True):
                spec = items[i][0]
                try:
                    if isinstance(info, Exception):
                        raise info
                    pool = self._pool_of(spec, info)
                except Exception as exc:
                    out[i] = exc
                    continue
                self._hold(info.sha256)
                prepared[i] = _Prepared(spec, *names[i], info, artifact_key(info.sha256), pool)
                uploads.setdefault(info.sha256, []).append(i)

            async def upload(digest: str) -> None:
                idx = uploads[digest]
                try:
                    await self._upload(digest, datas[idx[0]])
                except Exception as exc:
                    for i in idx:
                        out[i] = exc
                        self._release(prepared.pop(i))

            await _each(list(uploads), upload, concurrency)
            by_model: dict[tuple[str, str], list[int]] = {}
            for i in sorted(prepared):
                by_model.setdefault(names[i], []).append(i)
            staged: list[tuple[tuple[str, str], _Staged]] = []
            for m, idx in by_model.items():
                try:
                    staged.append((m, self._stage(m, records[m], [prepared[i] for i in idx], idx)))
                except Exception as exc:
                    for i in idx:
                        out[i] = exc
            for chunk in _chunks(staged):
                await self._commit_chunk(chunk, by_model, prepared, out)
        finally:
            for p in prepared.values():
                self._release(p)
        if len(self._gc_pending) >= self._gc_batch:
            await self.flush_gc()
        return [o if o is not None else RuntimeError("item not processed") for o in out]

    async def _payloads(
        self,
        items: Sequence[tuple[RegisterSpec, bytes | str]],
        names: Mapping[int, tuple[str, str]],
        out: list[Registered | Exception | None],
        concurrency: int,
    ) -> dict[int, bytes]:
        """Each named item's bytes: as given, or fetched from the store (failures to ``out``)."""
        datas: dict[int, bytes] = {}
        uris: list[int] = []
        for i in names:
            payload = items[i][1]
            if isinstance(payload, bytes):
                datas[i] = payload
            else:
                uris.append(i)

        async def fetch(i: int) -> None:
            try:
                datas[i] = await self._fetch(str(items[i][1]))
            except Exception as exc:
                out[i] = exc

        await _each(uris, fetch, concurrency)
        return datas

    async def _digests(
        self,
        items: Sequence[tuple[RegisterSpec, bytes | str]],
        datas: Mapping[int, bytes],
        out: list[Registered | Exception | None],
    ) -> dict[int, str]:
        """sha256 of each item's bytes, size and expected digest checked (failures to ``out``).

        Small artifacts are hashed right here (~10 us each); large ones on threads, together.
        """
        digests: dict[int, str] = {}
        large: list[int] = []
        for i in sorted(datas):
            data = datas[i]
            if len(data) > self.max_artifact_bytes:
                out[i] = self._too_large(data)
            elif len(data) > _INLINE_HASH_BYTES:
                large.append(i)
            else:
                digests[i] = sha256_hex(data)
        if large:
            hashed = await asyncio.gather(*(self._hash(datas[i]) for i in large))
            digests.update(zip(large, hashed, strict=True))
        for i in sorted(digests):
            expect = items[i][0].sha256
            if expect and expect.lower() != digests[i]:
                out[i] = InvalidArgument(f"artifact sha256 is {digests[i]}, expected {expect}")
                del digests[i]
        return digests

    def _stage(
        self,
        model: tuple[str, str],
        old: ModelRecord | None,
        items: list[_Prepared],
        idx: list[int],
    ) -> _Staged:
        """Fold ``items`` into the model's record, then retention; raise if it grew too big."""
        record = old or ModelRecord(*model)
        outcomes: dict[int, tuple[int, bool]] = {}
        for i, p in zip(idx, items, strict=True):
            new, version, created = _add_version(record, p, self._now())
            outcomes[i] = (version, created)
            record = new or record
        record, pruned = self._retain(record)
        value = record.encode()
        _check_record_size(record, value)
        expect = old.mod_revision if old is not None else 0
        return _Staged(model_key(*model), expect, record, value, outcomes, pruned)

    async def _commit_chunk(
        self,
        chunk: list[tuple[tuple[str, str], _Staged]],
        by_model: dict[tuple[str, str], list[int]],
        prepared: dict[int, _Prepared],
        out: list[Registered | Exception | None],
    ) -> None:
        compares = [Compare(s.key, s.expect) for _, s in chunk]
        puts = [Put(s.key, s.value) for _, s in chunk]
        try:
            res = await self._state.txn(compares, puts)
        except Exception as exc:
            for m, _ in chunk:
                for i in by_model[m]:
                    out[i] = exc
            return
        if res.succeeded:
            for _, s in chunk:
                written = s.record.with_revision(res.revision)
                pruned = tuple(mv.version for mv in s.pruned)
                for i, (version, created) in s.outcomes.items():
                    p = prepared[i]
                    out[i] = Registered(
                        p.tenant, p.name, version, created, p.info.sha256, written, pruned
                    )
                self._queue_gc(written, s.pruned)
            return
        self.conflicts += 1
        for m, _ in chunk:
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

    def _too_large(self, data: bytes) -> TooLarge:
        return TooLarge(
            f"artifact is {len(data)} bytes, over the limit of {self.max_artifact_bytes}"
        )

    async def _hash(self, data: bytes) -> str:
        if len(data) <= _INLINE_HASH_BYTES:
            return sha256_hex(data)
        return await asyncio.to_thread(sha256_hex, data)

    async def _validate_many(
        self, entries: Sequence[tuple[bytes, str, str]]
    ) -> list[ArtifactInfo | Exception]:
        """``inspect_artifact`` of each (bytes, sha256, framework) by the validation pool.

        Entries with the same digest and framework are validated once; the cache of earlier
        answers (by sha256) is used only when no framework was asked for or it matches, so
        every error message (unknown framework, mismatch) still comes from
        ``inspect_artifact``. An answer whose digest is not the one computed here is refused.
        """
        results: list[ArtifactInfo | Exception | None] = []
        todo: dict[tuple[str, str], list[int]] = {}
        for n, (_, digest, framework) in enumerate(entries):
            info = self._infos.get(digest)
            if info is not None and framework in ("", info.framework):
                self._infos.move_to_end(digest)
                results.append(info)
            else:
                results.append(None)
                todo.setdefault((digest, framework), []).append(n)
        if todo:
            keys = list(todo)
            answers = await self._validator.validate([(entries[todo[k][0]][0], k[1]) for k in keys])
            for key, answer in zip(keys, answers, strict=True):
                digest = key[0]
                outcome: ArtifactInfo | Exception = answer
                if isinstance(answer, ArtifactInfo):
                    if answer.sha256 != digest:
                        outcome = RuntimeError(
                            f"the validator hashed the artifact to {answer.sha256}, not {digest}"
                        )
                    else:
                        self._infos[digest] = answer
                for n in todo[key]:
                    results[n] = outcome
            while len(self._infos) > _INFO_CACHE:
                self._infos.popitem(last=False)
        return [r if r is not None else RuntimeError("not validated") for r in results]

    def _pool_of(self, spec: RegisterSpec, info: ArtifactInfo) -> str:
        pool = spec.pool or self._default_pools.get(info.framework) or DEFAULT_POOL
        return check_ident("pool", pool)

    async def _upload(self, digest: str, data: bytes) -> None:
        """Store the artifact under its content address (idempotent)."""
        if len(data) <= _BLIND_PUT_BYTES:
            await self._objects.put(artifact_key(digest), data)
        else:
            await self._objects.put_artifact(digest, data)

    async def _prepare(
        self, spec: RegisterSpec, data: bytes, current: ModelRecord | None
    ) -> Registered | _Prepared:
        """Steps 1-3 of registration: the existing version, or a validated, uploaded one.

        A returned ``_Prepared`` holds its digest in ``_inflight`` (safe from GC) until the
        caller passes it to ``_release``.
        """
        tenant, name = self._check_spec(spec)
        if len(data) > self.max_artifact_bytes:
            raise self._too_large(data)
        digest = await self._hash(data)
        if spec.sha256 and spec.sha256.lower() != digest:
            raise InvalidArgument(f"artifact sha256 is {digest}, expected {spec.sha256}")
        if current is not None and (hit := _version_with_sha(current, digest)) is not None:
            return Registered(tenant, name, hit.version, False, digest, current)
        (info,) = await self._validate_many([(data, digest, spec.framework)])
        if isinstance(info, Exception):
            raise info
        pool = self._pool_of(spec, info)
        self._hold(digest)
        try:
            await self._upload(digest, data)
        except BaseException:
            self._unhold(digest)
            raise
        return _Prepared(spec, tenant, name, info, artifact_key(digest), pool)

    def _hold(self, digest: str) -> None:
        """Keep ``digest`` from garbage collection until ``_unhold`` (upload to commit)."""
        self._inflight[digest] += 1
        for watch in self._gc_watch:
            watch.add(digest)

    def _unhold(self, digest: str) -> None:
        self._inflight[digest] -= 1
        if self._inflight[digest] <= 0:
            del self._inflight[digest]

    def _release(self, p: _Prepared) -> None:
        self._unhold(p.info.sha256)

    async def _commit(self, p: _Prepared) -> Registered:
        """Step 4 of registration, alone: CAS the new version into the record (retried)."""
        outcome: list[tuple[int, bool]] = []
        pruned: list[ModelVersion] = []

        def mutate(current: ModelRecord | None) -> ModelRecord | None:
            new, version, created = _add_version(
                current or ModelRecord(p.tenant, p.name), p, self._now()
            )
            outcome[:] = [(version, created)]
            pruned.clear()
            if new is None:
                return None
            new, doomed = self._retain(new)
            pruned[:] = doomed
            return new

        record = await self._update(p.tenant, p.name, mutate)
        version, created = outcome[0]
        self._queue_gc(record, pruned)
        return Registered(
            p.tenant,
            p.name,
            version,
            created,
            p.info.sha256,
            record,
            tuple(mv.version for mv in pruned),
        )

    def _retain(self, record: ModelRecord) -> tuple[ModelRecord, list[ModelVersion]]:
        """Apply ``keep_versions`` (0: keep all): (record after, versions it drops)."""
        if self.keep_versions <= 0 or len(record.versions) <= self.keep_versions:
            return record, []
        victims = rules.retention_victims(record, self.keep_versions)
        if not victims:
            return record, []
        doomed = [record.versions[v] for v in victims]
        kept = {v: mv for v, mv in record.versions.items() if v not in victims}
        return replace(record, versions=kept), doomed

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
        self._queue_gc(record, doomed)
        await self.flush_gc()
        return [mv.version for mv in doomed], record

    # --- artifact garbage collection ------------------------------------------------------

    def _queue_gc(self, record: ModelRecord, doomed: Sequence[ModelVersion]) -> None:
        """Queue the artifacts of ``doomed`` versions that ``record`` itself no longer names."""
        if self._gc == "off" or not doomed:
            return
        still = {mv.sha256 for mv in record.versions.values()}
        self._gc_pending |= {mv.sha256 for mv in doomed} - still

    async def flush_gc(self) -> int:
        """Delete the queued artifacts no record names any more; return how many were deleted.

        ``"model"`` mode trusts the queue (built from the trimmed model alone); ``"cluster"``
        first scans every record once for the whole queue. Digests held by registrations in
        flight, or prepared while the scan ran, stay queued for the next flush. A store error
        leaves the rest queued and is raised.
        """
        if self._gc == "off" or not self._gc_pending:
            self._gc_pending.clear()
            return 0
        candidates, self._gc_pending = self._gc_pending, set()
        watch: set[str] = set()
        self._gc_watch.append(watch)
        try:
            if self._gc == "cluster":
                async for kv, _ in iter_prefix(self._state, MODELS):
                    candidates.difference_update(m.decode() for m in _SHA_FIELD.findall(kv.value))
                    if not candidates:
                        break
        except BaseException:
            self._gc_pending |= candidates
            raise
        finally:
            self._gc_watch.remove(watch)
        busy = {sha for sha in candidates if sha in watch or sha in self._inflight}
        self._gc_pending |= busy
        deleted = 0
        todo = sorted(candidates - busy)
        for n, sha in enumerate(todo):
            try:
                await self._objects.delete(artifact_key(sha))
            except BaseException:
                self._gc_pending.update(todo[n:])
                raise
            deleted += 1
            log.info("deleted artifact %s (no version references it)", sha)
        self.artifacts_deleted += deleted
        return deleted

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

    async def _read_many(
        self, models: list[tuple[str, str]]
    ) -> dict[tuple[str, str], ModelRecord | None]:
        """Current records of ``models``: ``StateStore.get_many`` (one read-only transaction
        of single-key reads per ``MAX_TXN_OPS`` models).

        Not a range read: etcd counts every key from the start of a range to its end whatever
        the limit (under its index lock). Reading each batch as one page of neighbouring keys
        made a re-run of a 100K manifest cost etcd minutes of CPU, and calls timed out;
        point reads cost the same at any scale.
        """
        kvs = await self._state.get_many([model_key(t, n) for t, n in models])
        return {
            m: ModelRecord.decode(kv.value, kv.mod_revision) if kv is not None else None
            for m, kv in zip(models, kvs, strict=True)
        }

    async def _update(
        self,
        tenant: str,
        name: str,
        mutate: Callable[[ModelRecord | None], ModelRecord | None],
    ) -> ModelRecord:
        """Read, ``mutate`` (None: nothing to write), compare-and-swap; retry on conflict.

        ``mutate`` may run several times and must be pure apart from resetting what it
        reports. Raises ``Aborted`` after ``cas_retries`` lost races, ``TooLarge`` when the
        record would exceed ``MAX_RECORD_BYTES``.
        """
        key = model_key(check_ident("tenant", tenant), check_ident("model name", name))
        for attempt in range(self._retries):
            kv = await self._state.get(key)
            current = ModelRecord.decode(kv.value, kv.mod_revision) if kv is not None else None
            new = mutate(current)
            if new is None:
                return self._exists(current, tenant, name)
            value = new.encode()
            _check_record_size(new, value)
            expect = kv.mod_revision if kv is not None else 0
            res = await self._state.txn([Compare(key, expect)], [Put(key, value)])
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


def _chunks(
    staged: list[tuple[tuple[str, str], _Staged]],
) -> list[list[tuple[tuple[str, str], _Staged]]]:
    """Split staged records into transactions within ``MAX_TXN_OPS`` and ``MAX_TXN_BYTES``."""
    out: list[list[tuple[tuple[str, str], _Staged]]] = []
    chunk: list[tuple[tuple[str, str], _Staged]] = []
    size = 0
    for item in staged:
        n = len(item[1].value) + len(item[1].key)
        if chunk and (len(chunk) == MAX_TXN_OPS or size + n > MAX_TXN_BYTES):
            out.append(chunk)
            chunk, size = [], 0
        chunk.append(item)
        size += n
    if chunk:
        out.append(chunk)
    return out


async def _each(keys: Sequence[K], fn: Callable[[K], Awaitable[None]], limit: int) -> None:
    """``await fn(k)`` for every key, at most ``limit`` at once, in at most ``limit`` tasks.

    ``fn`` reports its own failures (an exception it lets out cancels nothing else but is
    raised here once all are done)."""
    it = iter(keys)

    async def worker() -> None:
        for k in it:
            await fn(k)

    if len(keys) == 1:
        await fn(keys[0])
    elif keys:
        await asyncio.gather(*(worker() for _ in range(min(max(1, limit), len(keys)))))


def _check_record_size(record: ModelRecord, value: bytes) -> None:
    if len(value) > MAX_RECORD_BYTES:
        raise TooLarge(
            f"model {record.full_name} would have a {len(value)}-byte record "
            f"({len(record.versions)} versions), over the limit of {MAX_RECORD_BYTES}: "
            "delete old versions (shoal models prune, or the keep_versions setting)"
        )


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
