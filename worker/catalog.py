"""Model records as the worker sees them: an in-memory LRU of ``ModelRecord``s read from etcd.

Resolution of ``(tenant, name, version)`` follows the one rule of the router and the simulator
(``shoal.records.resolve``: a number pins, a name is an alias, empty follows the traffic split,
else ``stable``, else the newest); what this module adds is where the record comes from:

* a number: the cached record answers when it has that version — versions are immutable once
  written, so a cached version never goes stale; otherwise the record is re-read from etcd
  once (concurrent misses for one model share that read) and NOT_FOUND names what is missing;
* an alias, or an empty version: aliases and splits move, so the cached record is used only
  while it is *fresh* — read or updated since the current watch on ``/shoal/models/`` started;
  otherwise it is re-read. If etcd is unreachable then, the stale record still answers.

A background watch applies changes to records already cached (it never adds records, so memory
stays bounded by ``max_records``). When the watch breaks, every record loses freshness and the
watch restarts with backoff. etcd unreachable on a miss raises ``Unavailable``.

``listener`` (the native front) hears of every record as it becomes fresh (its etcd value) and
as it stops being fresh or cached (``None``), so it can resolve aliases and the empty version
with the same rule, only while this catalog could.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

import cachetools

from shoal.records import (
    MODELS,
    STABLE,
    InvalidName,
    ModelRecord,
    ModelVersion,
    UnknownVersion,
    check_alias,
    model_key,
    resolve,
)
from shoal.state import StateError, StateStore, StateUnavailable, WatchEvent
from shoal.tasks import cancel_and_wait
from worker.errors import InvalidArgument, NotFound, Unavailable

log = logging.getLogger(__name__)


def parse_version(version: str) -> int | str:
    """``"3"`` -> 3, ``""`` -> ``"stable"`` (the default route's alias), ``"canary"`` ->
    ``"canary"``; else InvalidArgument. Checks the syntax; ``resolve`` picks the version."""
    v = version.strip()
    if not v:
        return STABLE
    if v.isdigit():
        n = int(v)
        if n <= 0:
            raise InvalidArgument(f"model version must be a positive integer, got {version!r}")
        return n
    try:
        return check_alias(v)
    except InvalidName as exc:
        raise InvalidArgument(f"model version {version!r}: not a number nor {exc}") from None


def _missing(rec: ModelRecord, want: int | str, version: str, exc: UnknownVersion) -> str:
    """The worker's words for what ``version`` names but ``rec`` lacks."""
    if isinstance(want, int):
        have = ", ".join(str(v) for v in sorted(rec.versions)) or "none"
        return f"version {want} of {rec.full_name} not found (versions: {have})"
    if version.strip():
        return f"model {rec.full_name} has no alias {want!r} (an explicit version?)"
    return str(exc)


#: Told ``(key, etcd value)`` when a record becomes fresh, ``(key, None)`` when it stops being
#: fresh or cached, and ``(None, None)`` when every record stops being fresh.
Listener = Callable[[tuple[str, str] | None, bytes | None], None]


class _Records(cachetools.LRUCache[tuple[str, str], ModelRecord]):
    """The LRU of records, telling the listener of the records it drops."""

    def __init__(self, maxsize: int, listener: Listener | None) -> None:
        super().__init__(maxsize=maxsize)
        self.listener = listener

    def popitem(self) -> tuple[tuple[str, str], ModelRecord]:
        key, rec = super().popitem()
        if self.listener is not None:
            self.listener(key, None)
        return key, rec


class Catalog:
    def __init__(
        self,
        store: StateStore,
        max_records: int = 100_000,
        rng: random.Random | None = None,
        listener: Listener | None = None,
    ) -> None:
        self._store = store
        self._rng = rng or random.Random()
        self._listener = listener
        self._records = _Records(max(1, max_records), listener)
        self._fresh: set[tuple[str, str]] = set()
        self._reads: dict[tuple[str, str], asyncio.Task[ModelRecord | None]] = {}
        self._task: asyncio.Task[None] | None = None
        self._generation = 0
        self.watching = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._watch_loop())

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    def __len__(self) -> int:
        return len(self._records)

    async def resolve(
        self, tenant: str, name: str, version: str
    ) -> tuple[ModelRecord, ModelVersion]:
        """The record and the version ``version`` names; NotFound / Unavailable otherwise."""
        want = parse_version(version)
        key = (tenant, name)
        rec = self._records.get(key)
        if isinstance(want, int):
            if rec is None or want not in rec.versions:
                rec = await self._read(key)
        elif rec is None or key not in self._fresh:
            try:
                rec = await self._read(key)
            except Unavailable:
                if rec is None:
                    raise
                log.debug("etcd unreachable: resolving %s/%s@%s from a stale record", *key, want)
        if rec is None:
            raise NotFound(f"model {tenant}/{name} not found")
        try:
            return rec, resolve(rec, version, self._rng).version
        except UnknownVersion as exc:
            raise NotFound(_missing(rec, want, version, exc)) from None

    async def _read(self, key: tuple[str, str]) -> ModelRecord | None:
        """Read one record from etcd; concurrent callers for one key share the read."""
        task = self._reads.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._fetch(key))
            self._reads[key] = task
            task.add_done_callback(lambda _t: self._reads.pop(key, None))
        return await asyncio.shield(task)

    async def _fetch(self, key: tuple[str, str]) -> ModelRecord | None:
        # Fresh only if one watch, started before the read, covered it from start to end.
        generation = self._generation if self.watching.is_set() else -1
        try:
            kv = await self._store.get(model_key(*key))
        except StateUnavailable as exc:
            raise Unavailable(f"state store unreachable reading {key[0]}/{key[1]}: {exc}") from None
        if kv is None:
            self._records.pop(key, None)
            self._fresh.discard(key)
            self._tell(key, None)
            return None
        rec = ModelRecord.decode(kv.value, kv.mod_revision)
        cached = self._records.get(key)
        if cached is None or cached.mod_revision <= rec.mod_revision:
            self._records[key] = rec
        if generation == self._generation and self.watching.is_set():
            self._fresh.add(key)
            current = self._records.get(key)
            if current is not None and current.mod_revision == rec.mod_revision:
                self._tell(key, kv.value)
        return self._records.get(key, rec)

    def _tell(self, key: tuple[str, str] | None, value: bytes | None) -> None:
        if self._listener is not None:
            self._listener(key, value)

    def _apply(self, ev: WatchEvent) -> None:
        tenant, _, name = ev.key[len(MODELS) :].partition("/")
        key = (tenant, name)
        cached = self._records.get(key)
        if cached is None:
            return
        if ev.kind == "delete":
            self._records.pop(key, None)
            self._fresh.discard(key)
            self._tell(key, None)
            return
        if ev.mod_revision > cached.mod_revision:
            try:
                self._records[key] = ModelRecord.decode(ev.value, ev.mod_revision)
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("ignoring an undecodable record at %s: %s", ev.key, exc)
                self._records.pop(key, None)
                self._tell(key, None)
                return
            self._tell(key, ev.value)
        self._fresh.add(key)

    async def _watch_loop(self) -> None:
        delay = 0.2
        while True:
            try:
                rev = (await self._store.range(MODELS, limit=1)).revision
                watch = await self._store.watch(MODELS, rev + 1)
                async with watch:
                    self._generation += 1
                    self.watching.set()
                    delay = 0.2
                    async for ev in watch:
                        self._apply(ev)
            except StateError as exc:
                log.info("model watch interrupted (%s); retrying in %.1fs", exc, delay)
            except Exception:  # a bug must not end the watch: it re-reads and goes on
                log.exception("model watch failed; retrying in %.1fs", delay)
            finally:
                self.watching.clear()
                self._fresh.clear()
                self._tell(None, None)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
