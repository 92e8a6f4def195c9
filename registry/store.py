"""Model records in etcd, each write a compare-and-swap: the registry's record store.

One key per model (``/shoal/models/<tenant>/<name>``, a ``ModelRecord``). ``update`` is a
read-modify-write guarded by a compare-and-swap on that key's ``mod_revision``; on a lost race
the record is re-read and the change re-applied, at most ``cas_retries`` times (with a short
random back-off, so racing writers stop colliding in lock step), after which ``Aborted`` is
raised. So two concurrent updates never silently lose one: each either lands on top of the
other or fails loudly. ``commit`` writes many records in one transaction, each guarded by its
own compare, for bulk registration.

No record grows past ``MAX_RECORD_BYTES`` (``TooLarge`` says to prune), and no transaction
past ``MAX_TXN_BYTES`` of records, below etcd's ``--max-request-bytes`` (1.5 MiB by default).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from registry.errors import Aborted, InvalidArgument, NotFound, TooLarge
from shoal.records import MODELS, ModelRecord, check_ident, model_key
from shoal.state import Compare, Put, StateStore

#: Page size bounds of ``page``.
DEFAULT_PAGE = 100
MAX_PAGE = 1000

#: Most record bytes in one transaction. etcd refuses requests over ``--max-request-bytes``
#: (1.5 MiB by default); keys, compares and framing need the rest.
MAX_TXN_BYTES = 1 << 20
#: Largest single model record written (a record that grows past it, with thousands of
#: versions, must be pruned: ``keep_versions`` / ``delete_versions``).
MAX_RECORD_BYTES = MAX_TXN_BYTES

#: ``mutate(current)``: the record to write, or None when there is nothing to write.
Mutation = Callable[[ModelRecord | None], ModelRecord | None]


@dataclass(frozen=True, slots=True)
class ModelPage:
    models: list[ModelRecord]
    next_page_token: str  # "": no more pages


@dataclass(frozen=True, slots=True)
class Write:
    """One record of a ``commit``: its key, the ``mod_revision`` it must still have (0: it
    must not exist) and its encoded value."""

    key: str
    expect: int
    value: bytes


def require(record: ModelRecord | None, tenant: str, name: str) -> ModelRecord:
    """``record``, or ``NotFound`` naming the model when there is none."""
    if record is None:
        raise NotFound(f"model {tenant}/{name} not found")
    return record


def encode(record: ModelRecord) -> bytes:
    """The record as written; ``TooLarge`` past ``MAX_RECORD_BYTES``."""
    value = record.encode()
    if len(value) > MAX_RECORD_BYTES:
        raise TooLarge(
            f"model {record.full_name} would have a {len(value)}-byte record "
            f"({len(record.versions)} versions), over the limit of {MAX_RECORD_BYTES}: "
            "delete old versions (shoal models prune, or the keep_versions setting)"
        )
    return value


class RecordStore:
    """Reads and compare-and-swap writes of model records (see the module docstring)."""

    def __init__(
        self, state: StateStore, cas_retries: int = 8, rng: random.Random | None = None
    ) -> None:
        self._state = state
        self._retries = max(1, cas_retries)
        self._rng = rng or random.Random()
        #: Lost compare-and-swaps (re-read and retried): a contention signal for metrics.
        self.conflicts = 0

    async def read(self, tenant: str, name: str) -> ModelRecord | None:
        check_ident("tenant", tenant)
        check_ident("model name", name)
        kv = await self._state.get(model_key(tenant, name))
        return ModelRecord.decode(kv.value, kv.mod_revision) if kv is not None else None

    async def get(self, tenant: str, name: str) -> ModelRecord:
        return require(await self.read(tenant, name), tenant, name)

    async def read_many(
        self, models: Sequence[tuple[str, str]]
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

    async def page(self, tenant: str = "", page_size: int = 0, page_token: str = "") -> ModelPage:
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

    async def update(self, tenant: str, name: str, mutate: Mutation) -> ModelRecord:
        """Read, ``mutate`` (None: nothing to write), compare-and-swap; retry on conflict.

        ``mutate`` may run several times and must be pure apart from resetting what it
        reports. A model that does not exist is ``NotFound`` when ``mutate`` writes nothing.
        Raises ``Aborted`` after ``cas_retries`` lost races, ``TooLarge`` when the record
        would exceed ``MAX_RECORD_BYTES``.
        """
        key = model_key(check_ident("tenant", tenant), check_ident("model name", name))
        for attempt in range(self._retries):
            kv = await self._state.get(key)
            current = ModelRecord.decode(kv.value, kv.mod_revision) if kv is not None else None
            new = mutate(current)
            if new is None:
                return require(current, tenant, name)
            value = encode(new)
            expect = kv.mod_revision if kv is not None else 0
            res = await self._state.txn([Compare(key, expect)], [Put(key, value)])
            if res.succeeded:
                return new.with_revision(res.revision)
            self.conflicts += 1
            await asyncio.sleep(self._rng.uniform(0, 0.005 * (attempt + 1)))
        raise Aborted(
            f"model {tenant}/{name} was changed concurrently {self._retries} times in a row; "
            "retry the request"
        )

    async def commit(self, writes: Sequence[Write]) -> int | None:
        """Write every record in one transaction if each still has its expected revision:
        the revision written, or None when another writer changed one of them (counted as a
        conflict; nothing was written). Store failures propagate."""
        res = await self._state.txn(
            [Compare(w.key, w.expect) for w in writes], [Put(w.key, w.value) for w in writes]
        )
        if res.succeeded:
            return res.revision
        self.conflicts += 1
        return None
