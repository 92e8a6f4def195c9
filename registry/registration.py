"""Registration: a validated artifact in the object store, then a version in its record.

``register`` runs four steps:

1. hash the bytes; if the model already has a version with that sha256, return it
   (``created=False``) and write nothing: re-running a registration is a no-op, and an alias
   that was moved since is *not* moved back;
2. validate the artifact by loading it (``shoal.frameworks.inspect_artifact``) in the
   validation pool (``registry.validation``): worker processes by default, or threads in this
   process; never on the event loop, never more loads at once than the pool has workers.
   Results are cached by sha256, so the same bytes registered for many models are loaded once;
3. upload it to its content address (content-addressed, so idempotent: small artifacts are
   written blindly, one round trip; large ones only when ``head`` does not find them);
4. compare-and-swap the record (``RecordStore.update``): version number ``next_version``, the
   optional alias in the same write, and (with ``keep_versions`` > 0) the retention pass in
   the same write too. Step 1 is repeated inside the CAS, so two concurrent registrations of
   the same bytes still make one version.

A crash between 3 and 4 leaves an unreferenced artifact, never a record pointing nowhere: a
record only ever names an artifact that was uploaded and validated before the record was
written. From upload to commit the digest is held from garbage collection
(``ArtifactCollector.hold``). ``registry.bulk`` runs the same steps for a whole batch.
"""

from __future__ import annotations

import asyncio
import os
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from registry import rules
from registry.errors import InvalidArgument, TooLarge
from registry.gc import ArtifactCollector
from registry.store import RecordStore
from registry.validation import Validator
from registry.validation.pool import ProcessValidator, ThreadValidator
from shoal.artifacts import ArtifactInfo, sha256_hex
from shoal.frameworks import inspect_artifact
from shoal.objstore import ObjectStore, artifact_key
from shoal.records import DEFAULT_POOL, ModelRecord, ModelVersion, check_alias, check_ident

#: Artifacts at most this large are hashed on the event loop (~30 µs); larger ones on threads.
INLINE_HASH_BYTES = 64 << 10
#: Artifacts at most this large are uploaded without asking the store first whether they are
#: there: for small objects a (content-addressed, idempotent) overwrite costs one round trip
#: where head-then-put costs two.
_BLIND_PUT_BYTES = 256 << 10
#: Validated artifacts remembered by sha256 (the same bytes registered for many models).
_INFO_CACHE = 4096


def _inspect(data: bytes, framework: str) -> ArtifactInfo:
    """In-process validation (``ThreadValidator``); looked up at call time, so tests can
    substitute ``inspect_artifact`` here."""
    return inspect_artifact(data, framework or None)


def validator(processes: int = -1, threads: int = 0) -> Validator:
    """``processes`` worker processes (-1: one per core, at most 4), or with ``processes=0``
    ``threads`` threads in this process (0: one per core, at most 4; small deployments: no
    extra interpreters). Started by its owner (``start``), not here."""
    cores = min(4, os.cpu_count() or 1)
    if processes == 0:
        return ThreadValidator(threads if threads > 0 else cores, _inspect)
    return ProcessValidator(processes if processes > 0 else cores)


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
class Prepared:
    """A validated, uploaded artifact waiting for its version record (held from GC)."""

    spec: RegisterSpec
    tenant: str
    name: str
    info: ArtifactInfo
    key: str
    pool: str


class Registration:
    """The registration steps (module docstring) over a record store, an object store, the
    artifact collector and a validation pool; ``now`` stamps new versions."""

    def __init__(
        self,
        records: RecordStore,
        objects: ObjectStore,
        gc: ArtifactCollector,
        validation: Validator,
        now: Callable[[], float],
        *,
        default_pools: Mapping[str, str] | None = None,
        max_artifact_bytes: int = 256 << 20,
        keep_versions: int = 0,
    ) -> None:
        self.records = records
        self.objects = objects
        self.gc = gc
        self._validation = validation
        self.now = now
        self._default_pools = dict(default_pools or {})
        self.max_artifact_bytes = max_artifact_bytes
        self.keep_versions = keep_versions
        self._infos: OrderedDict[str, ArtifactInfo] = OrderedDict()

    async def register(self, spec: RegisterSpec, data: bytes) -> Registered:
        """Register ``data`` as a new version (or find the identical one); see module doc.
        Artifacts that retention queued are collected before it returns."""
        tenant, name = check_spec(spec)
        ready = await self.prepare(spec, data, await self.records.read(tenant, name))
        if isinstance(ready, Registered):
            return ready
        try:
            result = await self.commit(ready)
        finally:
            self.gc.release(ready.info.sha256)
        await self.gc.flush()
        return result

    async def prepare(
        self, spec: RegisterSpec, data: bytes, current: ModelRecord | None
    ) -> Registered | Prepared:
        """Steps 1-3: the existing version, or a validated, uploaded artifact whose digest is
        held from GC until the caller releases it."""
        tenant, name = check_spec(spec)
        if len(data) > self.max_artifact_bytes:
            raise self.too_large(data)
        digest = await self.hash(data)
        if spec.sha256 and spec.sha256.lower() != digest:
            raise InvalidArgument(f"artifact sha256 is {digest}, expected {spec.sha256}")
        if current is not None and (hit := version_with_sha(current, digest)) is not None:
            return Registered(tenant, name, hit.version, False, digest, current)
        (info,) = await self.validate([(data, digest, spec.framework)])
        if isinstance(info, Exception):
            raise info
        pool = self.pool_of(spec, info)
        self.gc.hold(digest)
        try:
            await self.upload(digest, data)
        except BaseException:
            self.gc.release(digest)
            raise
        return Prepared(spec, tenant, name, info, artifact_key(digest), pool)

    async def commit(self, p: Prepared) -> Registered:
        """Step 4 alone: CAS the new version into the record (retried), retention in the same
        write; what retention dropped is queued for collection, not collected."""
        outcome: list[tuple[int, bool]] = []
        pruned: list[ModelVersion] = []

        def mutate(current: ModelRecord | None) -> ModelRecord | None:
            new, version, created = add_version(
                current or ModelRecord(p.tenant, p.name), p, self.now()
            )
            outcome[:] = [(version, created)]
            pruned.clear()
            if new is None:
                return None
            new, doomed = self.retain(new)
            pruned[:] = doomed
            return new

        record = await self.records.update(p.tenant, p.name, mutate)
        version, created = outcome[0]
        self.gc.queue(record, pruned)
        dropped = tuple(mv.version for mv in pruned)
        return Registered(p.tenant, p.name, version, created, p.info.sha256, record, dropped)

    def retain(self, record: ModelRecord) -> tuple[ModelRecord, list[ModelVersion]]:
        """Retention after a registration (``keep_versions``; 0: keep all)."""
        if self.keep_versions <= 0:
            return record, []
        return rules.retain(record, self.keep_versions)

    async def fetch(self, uri: str) -> bytes:
        """An object already in the store (a key, or a URL under the store's URL), checked
        against the digest in its key when it is content-addressed."""
        base = self.objects.url.rstrip("/") + "/"
        key = uri[len(base) :] if uri.startswith(base) else uri
        if not key or "://" in key:
            raise InvalidArgument(f"{uri!r} is not a key in the object store {self.objects.url}")
        data = await self.objects.get(key)
        digest = sha256_hex(data)
        if key.startswith("artifacts/sha256/") and key.rsplit("/", 1)[-1] != digest:
            raise InvalidArgument(f"object {key} is corrupt: its bytes hash to {digest}")
        return data

    def too_large(self, data: bytes) -> TooLarge:
        return TooLarge(
            f"artifact is {len(data)} bytes, over the limit of {self.max_artifact_bytes}"
        )

    async def hash(self, data: bytes) -> str:
        if len(data) <= INLINE_HASH_BYTES:
            return sha256_hex(data)
        return await asyncio.to_thread(sha256_hex, data)

    async def validate(
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
            answers = await self._validation.validate(
                [(entries[todo[k][0]][0], k[1]) for k in keys]
            )
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

    def pool_of(self, spec: RegisterSpec, info: ArtifactInfo) -> str:
        pool = spec.pool or self._default_pools.get(info.framework) or DEFAULT_POOL
        return check_ident("pool", pool)

    async def upload(self, digest: str, data: bytes) -> None:
        """Store the artifact under its content address (idempotent)."""
        if len(data) <= _BLIND_PUT_BYTES:
            await self.objects.put(artifact_key(digest), data)
        else:
            await self.objects.put_artifact(digest, data)


def check_spec(spec: RegisterSpec) -> tuple[str, str]:
    """(tenant, name) of a well-formed spec; ``InvalidName``/``InvalidArgument`` otherwise."""
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


def add_version(
    record: ModelRecord, p: Prepared, now: float
) -> tuple[ModelRecord | None, int, bool]:
    """(new record or None when unchanged, version, created): reuse a version with the same
    sha256, else append ``next_version`` (and point the alias at it, if one was asked for)."""
    hit = version_with_sha(record, p.info.sha256)
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


def version_with_sha(record: ModelRecord, sha256: str) -> ModelVersion | None:
    for mv in record.versions.values():
        if mv.sha256 == sha256:
            return mv
    return None
