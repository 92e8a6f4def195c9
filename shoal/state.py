"""The state store: an async key-value interface over etcd's data model.

Keys are ``str`` (UTF-8 in etcd), values ``bytes``. Every write returns the store revision it
landed at; reads carry ``mod_revision`` so callers can compare-and-swap. Two implementations:
``shoal.etcd.EtcdStore`` (production, tests of wiring) and ``MemoryStore`` here (unit tests of
pure logic only; it has etcd's revision, lease and watch semantics but no network).

Failure modes: ``StateUnavailable`` when the store cannot be reached (callers keep serving from
their in-memory view and retry); ``Conflict`` when a compare-and-swap loses.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

#: etcd's default limit on operations in one transaction (--max-txn-ops).
MAX_TXN_OPS = 128


class StateError(Exception):
    """Base class of state-store failures."""


class StateUnavailable(StateError):
    """The store could not be reached or did not answer in time."""


class Conflict(StateError):
    """A compare-and-swap found the key changed since it was read."""


class LeaseLost(StateError):
    """A lease expired or was revoked; keys attached to it are gone."""


@dataclass(frozen=True, slots=True)
class KV:
    key: str
    value: bytes
    mod_revision: int
    create_revision: int
    version: int
    lease: int = 0


@dataclass(frozen=True, slots=True)
class RangePage:
    kvs: list[KV]
    more: bool
    revision: int

    def next_start(self) -> str | None:
        """The key to start the next page from, or None when this is the last page."""
        return self.kvs[-1].key + "\x00" if self.more and self.kvs else None


@dataclass(frozen=True, slots=True)
class WatchEvent:
    kind: Literal["put", "delete"]
    key: str
    value: bytes
    mod_revision: int


@dataclass(frozen=True, slots=True)
class Compare:
    """Holds when ``key``'s mod_revision equals ``mod_revision`` (0: the key must not exist)."""

    key: str
    mod_revision: int


@dataclass(frozen=True, slots=True)
class Put:
    key: str
    value: bytes
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Delete:
    key: str
    prefix: bool = False


Op = Put | Delete


@dataclass(frozen=True, slots=True)
class TxnResult:
    succeeded: bool
    revision: int


def prefix_end(prefix: str) -> str:
    """The smallest key greater than every key starting with ``prefix`` (etcd's range_end)."""
    b = bytearray(prefix.encode())
    while b:
        if b[-1] < 0xFF:
            b[-1] += 1
            return b.decode(errors="surrogateescape")
        b.pop()
    return "\x00"


class Lease(Protocol):
    id: int
    ttl: int

    async def revoke(self) -> None: ...

    @property
    def lost(self) -> asyncio.Event:
        """Set when keep-alive could not renew the lease before it expired."""
        ...


class Watch(Protocol):
    """An open watch: iterate events; ``cancel()`` (or leaving ``async with``) stops it.

    Iteration raises ``StateUnavailable`` when the stream breaks and ``StateError`` when the
    start revision was compacted; the caller then re-reads and watches again.
    """

    def __aiter__(self) -> AsyncIterator[WatchEvent]: ...

    async def cancel(self) -> None: ...

    async def __aenter__(self) -> Watch: ...

    async def __aexit__(self, *exc: object) -> None: ...


class StateStore(Protocol):
    async def get(self, key: str) -> KV | None: ...

    async def get_many(self, keys: Sequence[str]) -> list[KV | None]:
        """``get`` of each key, in order, at one revision per ``MAX_TXN_OPS`` keys.

        etcd reads each chunk in one read-only transaction of single-key ranges (one round
        trip, point lookups: unlike a range over neighbouring keys, the cost does not grow
        with the keys around them). Keys in different chunks may be read at different
        revisions, as separate gets would be.
        """
        ...

    async def put(self, key: str, value: bytes, lease: int = 0) -> int: ...

    async def delete(self, key: str, prefix: bool = False) -> int:
        """Delete ``key`` (or every key under it); return how many keys were deleted."""
        ...

    async def range(
        self, prefix: str, *, start: str | None = None, limit: int = 1000, revision: int = 0
    ) -> RangePage:
        """Keys under ``prefix`` from ``start`` (inclusive), at most ``limit``, in key order.

        ``revision`` > 0 reads at that revision, so paging stays consistent.
        """
        ...

    async def txn(self, compares: Sequence[Compare], ops: Sequence[Op]) -> TxnResult: ...

    async def grant_lease(self, ttl: int) -> Lease:
        """A lease kept alive in the background until revoked or the store is closed."""
        ...

    async def watch(self, prefix: str, start_revision: int) -> Watch: ...

    async def close(self) -> None: ...


async def iter_prefix(
    store: StateStore, prefix: str, page_size: int = 1000
) -> AsyncIterator[tuple[KV, int]]:
    """Every key under ``prefix`` at one consistent revision, paged; yields (kv, revision)."""
    page = await store.range(prefix, limit=page_size)
    revision = page.revision
    while True:
        for kv in page.kvs:
            yield kv, revision
        start = page.next_start()
        if start is None:
            return
        page = await store.range(prefix, start=start, limit=page_size, revision=revision)


async def read_prefix(
    store: StateStore, prefix: str, page_size: int = 1000
) -> tuple[list[KV], int]:
    """All keys under ``prefix`` and the revision they were read at: one consistent read,
    so a watch from ``revision + 1`` misses nothing (an empty prefix included: its revision is
    the first page's, not a second read's, which a write in between would have passed)."""
    page = await store.range(prefix, limit=page_size)
    revision = page.revision
    kvs = list(page.kvs)
    while (start := page.next_start()) is not None:
        page = await store.range(prefix, start=start, limit=page_size, revision=revision)
        kvs.extend(page.kvs)
    return kvs, revision


async def cas_put(store: StateStore, key: str, value: bytes, expect_mod_revision: int) -> int:
    """Write ``key`` only if its mod_revision is still ``expect_mod_revision`` (0: absent).

    Returns the new revision; raises ``Conflict`` when someone else wrote first.
    """
    res = await store.txn([Compare(key, expect_mod_revision)], [Put(key, value)])
    if not res.succeeded:
        raise Conflict(f"{key} changed since revision {expect_mod_revision}")
    return res.revision


async def batch_write(store: StateStore, ops: Sequence[Op], max_ops: int = MAX_TXN_OPS) -> int:
    """Apply ``ops`` in transactions of at most ``max_ops`` each; return the last revision.

    Each chunk is atomic; the batch as a whole is not (a failure leaves earlier chunks applied).
    """
    revision = 0
    for i in range(0, len(ops), max_ops):
        res = await store.txn([], ops[i : i + max_ops])
        revision = res.revision
    return revision


# --- in-memory implementation (unit tests of pure logic) ------------------------------------


@dataclass
class _MemLease:
    id: int
    ttl: int
    expires_at: float
    store: MemoryStore
    _lost: asyncio.Event = field(default_factory=asyncio.Event)

    async def revoke(self) -> None:
        self.store._expire_lease(self.id)

    @property
    def lost(self) -> asyncio.Event:
        return self._lost


class _MemWatch:
    def __init__(self, store: MemoryStore, prefix: str) -> None:
        self._store = store
        self._prefix = prefix
        self._queue: asyncio.Queue[WatchEvent | None] = asyncio.Queue()

    def matches(self, key: str) -> bool:
        return key.startswith(self._prefix)

    def push(self, event: WatchEvent | None) -> None:
        self._queue.put_nowait(event)

    async def __aiter__(self) -> AsyncIterator[WatchEvent]:
        while True:
            ev = await self._queue.get()
            if ev is None:
                return
            yield ev

    async def cancel(self) -> None:
        with contextlib.suppress(ValueError):
            self._store._watches.remove(self)
        self.push(None)

    async def __aenter__(self) -> _MemWatch:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.cancel()


class MemoryStore:
    """In-process ``StateStore`` with etcd's semantics, for unit tests of pure logic.

    Leases expire when ``expire_leases()`` is called with a clock past their deadline (time is
    injected, nothing runs in the background).
    """

    def __init__(self, now: Callable[[], float] | None = None) -> None:
        self._data: dict[str, KV] = {}
        self._keys: list[str] = []
        self._history: list[WatchEvent] = []
        self._revision = 1
        self._leases: dict[int, _MemLease] = {}
        self._next_lease = 1
        self._watches: list[_MemWatch] = []
        self._now = now or (lambda: 0.0)
        self.available = True

    def _check(self) -> None:
        if not self.available:
            raise StateUnavailable("memory store marked unavailable")

    async def get(self, key: str) -> KV | None:
        self._check()
        return self._data.get(key)

    async def get_many(self, keys: Sequence[str]) -> list[KV | None]:
        self._check()
        return [self._data.get(k) for k in keys]

    def _apply(self, op: Op, revision: int) -> int:
        if isinstance(op, Put):
            old = self._data.get(op.key)
            if old is None:
                bisect.insort(self._keys, op.key)
            self._data[op.key] = KV(
                op.key,
                op.value,
                revision,
                old.create_revision if old else revision,
                (old.version + 1) if old else 1,
                op.lease,
            )
            self._emit(WatchEvent("put", op.key, op.value, revision))
            return 1
        keys = [k for k in self._keys if k.startswith(op.key)] if op.prefix else [op.key]
        n = 0
        for k in keys:
            if self._data.pop(k, None) is not None:
                self._keys.remove(k)
                self._emit(WatchEvent("delete", k, b"", revision))
                n += 1
        return n

    def _emit(self, ev: WatchEvent) -> None:
        self._history.append(ev)
        for w in self._watches:
            if w.matches(ev.key):
                w.push(ev)

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        self._check()
        self._revision += 1
        self._apply(Put(key, value, lease), self._revision)
        return self._revision

    async def delete(self, key: str, prefix: bool = False) -> int:
        self._check()
        self._revision += 1
        n = self._apply(Delete(key, prefix), self._revision)
        if n == 0:
            self._revision -= 1
        return n

    async def range(
        self, prefix: str, *, start: str | None = None, limit: int = 1000, revision: int = 0
    ) -> RangePage:
        self._check()
        if revision and revision != self._revision:
            raise StateError("MemoryStore reads only at the current revision")
        lo = bisect.bisect_left(self._keys, start if start is not None else prefix)
        out: list[KV] = []
        more = False
        for k in self._keys[lo:]:
            if not k.startswith(prefix):
                break
            if len(out) == limit:
                more = True
                break
            out.append(self._data[k])
        return RangePage(out, more, self._revision)

    async def txn(self, compares: Sequence[Compare], ops: Sequence[Op]) -> TxnResult:
        self._check()
        for c in compares:
            kv = self._data.get(c.key)
            if (kv.mod_revision if kv else 0) != c.mod_revision:
                return TxnResult(False, self._revision)
        if ops:
            self._revision += 1
            for op in ops:
                self._apply(op, self._revision)
        return TxnResult(True, self._revision)

    async def grant_lease(self, ttl: int) -> _MemLease:
        self._check()
        lease = _MemLease(self._next_lease, ttl, self._now() + ttl, self)
        self._next_lease += 1
        self._leases[lease.id] = lease
        return lease

    def keepalive(self, lease_id: int) -> None:
        lease = self._leases[lease_id]
        lease.expires_at = self._now() + lease.ttl

    def _expire_lease(self, lease_id: int) -> None:
        lease = self._leases.pop(lease_id, None)
        if lease is None:
            return
        doomed = [k for k, kv in self._data.items() if kv.lease == lease_id]
        if doomed:
            self._revision += 1
            for k in doomed:
                self._apply(Delete(k), self._revision)
        lease._lost.set()

    def expire_leases(self) -> None:
        now = self._now()
        for lid in [lid for lid, le in self._leases.items() if le.expires_at <= now]:
            self._expire_lease(lid)

    async def watch(self, prefix: str, start_revision: int) -> _MemWatch:
        self._check()
        w = _MemWatch(self, prefix)
        for ev in self._history:
            if ev.mod_revision >= start_revision and w.matches(ev.key):
                w.push(ev)
        self._watches.append(w)
        return w

    async def close(self) -> None:
        for w in list(self._watches):
            await w.cancel()
