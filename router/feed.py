"""Feed the native gateway's table from etcd: every change under the prefixes it routes by.

One ``PrefixFeed`` per prefix. Algorithm (as ``shoal.mirror.PrefixMirror``): read the prefix
in pages at one revision R and push every key, then watch from R+1 and push each event. Values
go to the gateway exactly as etcd holds them (the records' JSON), so Python decodes nothing on
this path. If the watch breaks the gateway keeps its table (the feed is *stale*) and the feed
retries with capped exponential backoff; on reconnect it re-reads the prefix and pushes what
changed meanwhile, deletions included (it remembers each key's ``mod_revision``, not values).

Events that arrive in one turn of the event loop are pushed as one batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Sequence

from shoal.records import CLUSTER, MODELS, PLACEMENT, TENANTS, WORKERS
from shoal.state import StateError, StateStore, WatchEvent, iter_prefix

log = logging.getLogger(__name__)

#: Everything the gateway routes by.
PREFIXES = (MODELS, TENANTS, WORKERS, PLACEMENT, CLUSTER)

Change = tuple[str, bytes | None]
Apply = Callable[[Sequence[Change]], Sequence[tuple[str, str]]]

#: Keys per etcd range read of a full read. etcd counts every key from a page's start to the
#: end of the range whatever the limit, so small pages make a full read quadratic: 100K models
#: took 6.9 s in pages of 1,000 and 0.8 s in pages of 20,000 (each page ~10 MB, far below
#: the client's 64 MiB message limit).
PAGE = 10_000


class PrefixFeed:
    """Pushes ``prefix``'s keys into ``apply``; calls ``on_state`` when ``synced``/``stale``
    change."""

    def __init__(
        self,
        store: StateStore,
        prefix: str,
        apply: Apply,
        on_state: Callable[[], None] = lambda: None,
        backoff_max: float = 5.0,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.prefix = prefix
        self._apply = apply
        self._on_state = on_state
        self._backoff_max = backoff_max
        self._rng = rng or random.Random()
        self.revisions: dict[str, int] = {}
        self.revision = 0
        self.synced = asyncio.Event()
        self.stale = True
        self.failures = 0
        self._pending: list[Change] = []
        self._flush_scheduled = False
        self._task: asyncio.Task[None] | None = None

    async def start(self, ready_within: float = 30.0) -> None:
        """Start following; return once the first full read has been pushed."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        await asyncio.wait_for(self.synced.wait(), ready_within)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _push(self, changes: Sequence[Change]) -> None:
        for key, why in self._apply(changes):
            log.warning("gateway skipped undecodable %s: %s", key, why)

    async def _resync(self) -> None:
        """Read the prefix at one revision, pushing each page as it arrives (reading the next
        page overlaps the gateway's decoding of this one), then the deletions."""
        fresh: dict[str, int] = {}
        revision = 0
        page: list[Change] = []
        async for kv, rev in iter_prefix(self.store, self.prefix, page_size=PAGE):
            revision = rev
            fresh[kv.key] = kv.mod_revision
            if self.revisions.get(kv.key) != kv.mod_revision:
                page.append((kv.key, kv.value))
            if len(page) >= PAGE:
                self._push(page)
                page = []
        gone: list[Change] = [(k, None) for k in self.revisions if k not in fresh]
        if page or gone:
            self._push(page + gone)
        if not fresh:
            revision = (await self.store.range(self.prefix, limit=1)).revision
        self.revisions = fresh
        self.revision = revision

    def _event(self, ev: WatchEvent) -> None:
        if ev.kind == "delete":
            self.revisions.pop(ev.key, None)
            self._pending.append((ev.key, None))
        else:
            self.revisions[ev.key] = ev.mod_revision
            self._pending.append((ev.key, ev.value))
        self.revision = max(self.revision, ev.mod_revision)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        pending, self._pending = self._pending, []
        if pending:
            self._push(pending)

    def _set_stale(self, stale: bool) -> None:
        if stale != self.stale:
            self.stale = stale
            self._on_state()

    async def _run(self) -> None:
        delay = 0.1
        while True:
            try:
                await self._resync()
                watch = await self.store.watch(self.prefix, self.revision + 1)
                first = not self.synced.is_set()
                self.synced.set()
                self._set_stale(False)
                if first:
                    self._on_state()
                delay = 0.1
                async with watch:
                    async for ev in watch:
                        self._event(ev)
            except asyncio.CancelledError:
                self._flush()
                raise
            except StateError as exc:
                self._flush()
                self.failures += 1
                if not self.stale:
                    log.warning(
                        "lost etcd watch on %s (%s); serving the last view", self.prefix, exc
                    )
                self._set_stale(True)
            except Exception:  # a bug must not end the feed: it re-reads and goes on
                self._flush()
                self.failures += 1
                log.exception("etcd feed of %s failed; re-reading", self.prefix)
                self._set_stale(True)
            await asyncio.sleep(delay * (0.5 + self._rng.random()))
            delay = min(delay * 2, self._backoff_max)
