"""Keep an in-memory copy of everything under an etcd prefix, current through a watch.

Algorithm: read the prefix in pages at one revision R, then watch from R+1 and apply each
event. If the watch breaks (etcd restarting, network) the mirror keeps its last view, marks
itself stale and retries with exponential backoff (capped); on reconnect it re-reads the
prefix and swaps the new view in whole, so no deletion that happened during the outage is
missed. ``on_change`` is called with the keys that changed after every applied batch.

Readers never block on etcd: ``items``/``get`` read the current dict.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import Generic, TypeVar

from shoal.state import StateError, StateStore, WatchEvent, read_prefix
from shoal.tasks import cancel_and_wait

log = logging.getLogger(__name__)

T = TypeVar("T")


class PrefixMirror(Generic[T]):
    """A decoded copy of ``prefix``; values that fail to decode are skipped and logged."""

    def __init__(
        self,
        store: StateStore,
        prefix: str,
        decode: Callable[[str, bytes, int], T],
        on_change: Callable[[set[str]], None] | None = None,
        backoff_max: float = 5.0,
    ) -> None:
        self.store = store
        self.prefix = prefix
        self._decode = decode
        self._on_change = on_change
        self._backoff_max = backoff_max
        self.items: dict[str, T] = {}
        self.revision = 0
        self.synced = asyncio.Event()
        self.stale = True
        self.failures = 0
        #: Bumped on every change of ``items`` (a generation for caches derived from them).
        self.changes = 0
        self._task: asyncio.Task[None] | None = None

    def get(self, key: str) -> T | None:
        return self.items.get(key)

    async def start(self, wait: bool = True, ready_within: float = 30.0) -> None:
        """Start following; with ``wait`` return once the first full read is done."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        if wait:
            await asyncio.wait_for(self.synced.wait(), ready_within)

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    def _decode_or_skip(self, key: str, value: bytes, rev: int) -> T | None:
        try:
            return self._decode(key, value, rev)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("skipping undecodable %s: %s", key, exc)
            return None

    async def _resync(self) -> None:
        kvs, revision = await read_prefix(self.store, self.prefix)
        fresh: dict[str, T] = {}
        for kv in kvs:
            item = self._decode_or_skip(kv.key, kv.value, kv.mod_revision)
            if item is not None:
                fresh[kv.key] = item
        changed = set(fresh) ^ set(self.items)
        changed |= {k for k in fresh.keys() & self.items.keys() if fresh[k] != self.items[k]}
        self.items = fresh
        self.revision = revision
        if changed:
            self.changes += 1
            if self._on_change:
                self._on_change(changed)

    def _apply(self, ev: WatchEvent) -> None:
        if ev.kind == "delete":
            self.items.pop(ev.key, None)
        else:
            item = self._decode_or_skip(ev.key, ev.value, ev.mod_revision)
            if item is None:
                self.items.pop(ev.key, None)
            else:
                self.items[ev.key] = item
        self.revision = max(self.revision, ev.mod_revision)
        self.changes += 1

    async def _run(self) -> None:
        delay = 0.1
        while True:
            try:
                await self._resync()
                watch = await self.store.watch(self.prefix, self.revision + 1)
                self.stale = False
                self.synced.set()
                delay = 0.1
                async with watch:
                    async for ev in watch:
                        self._apply(ev)
                        if self._on_change:
                            self._on_change({ev.key})
            except asyncio.CancelledError:
                raise
            except StateError as exc:
                self.failures += 1
                if not self.stale:
                    log.warning(
                        "lost etcd watch on %s (%s); serving the last view", self.prefix, exc
                    )
                self.stale = True
            except Exception:  # a bug must not end the mirror: it re-reads and goes on
                self.failures += 1
                log.exception("etcd mirror of %s failed; re-reading", self.prefix)
                self.stale = True
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, self._backoff_max)
