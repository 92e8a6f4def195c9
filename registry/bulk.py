"""Bulk registration: the registration steps (``registry.registration``) for a whole batch.

``register_many`` does each step for all items at once rather than one item at a time: one
read of the batch's records, one call to the validation pool, concurrent uploads, and the
record writes for many models per etcd transaction: at most ``MAX_TXN_OPS`` (128) models and
``MAX_TXN_BYTES`` of records per transaction, below etcd's defaults (``--max-txn-ops`` 128,
``--max-request-bytes`` 1.5 MiB), so bulk registration is not one round trip per model.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from registry.errors import InvalidArgument
from registry.registration import (
    INLINE_HASH_BYTES,
    Prepared,
    Registered,
    RegisterSpec,
    Registration,
    add_version,
    check_spec,
    version_with_sha,
)
from registry.store import MAX_TXN_BYTES, Write, encode
from shoal.artifacts import sha256_hex
from shoal.objstore import artifact_key
from shoal.records import ModelRecord, ModelVersion, model_key
from shoal.state import MAX_TXN_OPS

K = TypeVar("K")
Model = tuple[str, str]
Outcomes = list[Registered | Exception | None]


@dataclass(slots=True)
class _Staged:
    """One model's record as a bulk commit will write it, and what each item gets."""

    write: Write
    record: ModelRecord
    outcomes: dict[int, tuple[int, bool]]  # item index -> (version, created)
    pruned: list[ModelVersion]


async def register_many(
    reg: Registration, items: Sequence[tuple[RegisterSpec, bytes | str]], concurrency: int = 16
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

    An item's failure (invalid artifact, store error) is its outcome; others go on. If the
    caller is cancelled midway, each transaction has either landed whole or not at all, and
    every record written names an uploaded, validated artifact. Retention's artifacts are
    collected once a batch of them has queued (``ArtifactCollector.due``).
    """
    out: Outcomes = [None] * len(items)
    names: dict[int, Model] = {}
    for i, (spec, _) in enumerate(items):
        try:
            names[i] = check_spec(spec)
        except Exception as exc:
            out[i] = exc
    records = await reg.records.read_many(sorted(set(names.values())))
    datas = await _payloads(reg, items, names, out, concurrency)
    digests = await _digests(reg, items, datas, out)
    fresh: list[int] = []
    for i, digest in digests.items():
        current = records[names[i]]
        if current is not None and (hit := version_with_sha(current, digest)) is not None:
            out[i] = Registered(*names[i], hit.version, False, digest, current)
        else:
            fresh.append(i)
    infos = await reg.validate([(datas[i], digests[i], items[i][0].framework) for i in fresh])
    prepared: dict[int, Prepared] = {}
    try:
        uploads: dict[str, list[int]] = {}
        for i, info in zip(fresh, infos, strict=True):
            spec = items[i][0]
            try:
                if isinstance(info, Exception):
                    raise info
                pool = reg.pool_of(spec, info)
            except Exception as exc:
                out[i] = exc
                continue
            reg.gc.hold(info.sha256)
            prepared[i] = Prepared(spec, *names[i], info, artifact_key(info.sha256), pool)
            uploads.setdefault(info.sha256, []).append(i)

        async def upload(digest: str) -> None:
            idx = uploads[digest]
            try:
                await reg.upload(digest, datas[idx[0]])
            except Exception as exc:
                for i in idx:
                    out[i] = exc
                    reg.gc.release(prepared.pop(i).info.sha256)

        await _each(list(uploads), upload, concurrency)
        by_model: dict[Model, list[int]] = {}
        for i in sorted(prepared):
            by_model.setdefault(names[i], []).append(i)
        staged: list[tuple[Model, _Staged]] = []
        for m, idx in by_model.items():
            try:
                staged.append((m, _stage(reg, m, records[m], [prepared[i] for i in idx], idx)))
            except Exception as exc:
                for i in idx:
                    out[i] = exc
        for chunk in _chunks(staged):
            await _commit_chunk(reg, chunk, by_model, prepared, out)
    finally:
        for p in prepared.values():
            reg.gc.release(p.info.sha256)
    if reg.gc.due:
        await reg.gc.flush()
    return [o if o is not None else RuntimeError("item not processed") for o in out]


async def _payloads(
    reg: Registration,
    items: Sequence[tuple[RegisterSpec, bytes | str]],
    names: Mapping[int, Model],
    out: Outcomes,
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
            datas[i] = await reg.fetch(str(items[i][1]))
        except Exception as exc:
            out[i] = exc

    await _each(uris, fetch, concurrency)
    return datas


async def _digests(
    reg: Registration,
    items: Sequence[tuple[RegisterSpec, bytes | str]],
    datas: Mapping[int, bytes],
    out: Outcomes,
) -> dict[int, str]:
    """sha256 of each item's bytes, size and expected digest checked (failures to ``out``).

    Small artifacts are hashed right here (~10 us each); large ones on threads, together.
    """
    digests: dict[int, str] = {}
    large: list[int] = []
    for i in sorted(datas):
        data = datas[i]
        if len(data) > reg.max_artifact_bytes:
            out[i] = reg.too_large(data)
        elif len(data) > INLINE_HASH_BYTES:
            large.append(i)
        else:
            digests[i] = sha256_hex(data)
    if large:
        hashed = await asyncio.gather(*(reg.hash(datas[i]) for i in large))
        digests.update(zip(large, hashed, strict=True))
    for i in sorted(digests):
        expect = items[i][0].sha256
        if expect and expect.lower() != digests[i]:
            out[i] = InvalidArgument(f"artifact sha256 is {digests[i]}, expected {expect}")
            del digests[i]
    return digests


def _stage(
    reg: Registration, model: Model, old: ModelRecord | None, items: list[Prepared], idx: list[int]
) -> _Staged:
    """Fold ``items`` into the model's record, then retention; raise if it grew too big."""
    record = old or ModelRecord(*model)
    outcomes: dict[int, tuple[int, bool]] = {}
    for i, p in zip(idx, items, strict=True):
        new, version, created = add_version(record, p, reg.now())
        outcomes[i] = (version, created)
        record = new or record
    record, pruned = reg.retain(record)
    expect = old.mod_revision if old is not None else 0
    return _Staged(Write(model_key(*model), expect, encode(record)), record, outcomes, pruned)


async def _commit_chunk(
    reg: Registration,
    chunk: list[tuple[Model, _Staged]],
    by_model: dict[Model, list[int]],
    prepared: dict[int, Prepared],
    out: Outcomes,
) -> None:
    try:
        revision = await reg.records.commit([s.write for _, s in chunk])
    except Exception as exc:
        for m, _ in chunk:
            for i in by_model[m]:
                out[i] = exc
        return
    if revision is not None:
        for _, s in chunk:
            written = s.record.with_revision(revision)
            pruned = tuple(mv.version for mv in s.pruned)
            for i, (version, created) in s.outcomes.items():
                p = prepared[i]
                out[i] = Registered(
                    p.tenant, p.name, version, created, p.info.sha256, written, pruned
                )
            reg.gc.queue(written, s.pruned)
        return
    for m, _ in chunk:
        for i in by_model[m]:
            try:
                out[i] = await reg.commit(prepared[i])
            except Exception as exc:
                out[i] = exc


def _chunks(staged: list[tuple[Model, _Staged]]) -> list[list[tuple[Model, _Staged]]]:
    """Split staged records into transactions within ``MAX_TXN_OPS`` and ``MAX_TXN_BYTES``."""
    out: list[list[tuple[Model, _Staged]]] = []
    chunk: list[tuple[Model, _Staged]] = []
    size = 0
    for item in staged:
        n = len(item[1].write.value) + len(item[1].write.key)
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
