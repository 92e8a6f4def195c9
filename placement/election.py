"""Leader election through etcd: one key, created only if absent, under a short lease.

``campaign()`` grants a lease and tries ``create-if-absent(ELECTION, instance_id, lease)`` in
one transaction. The loser watches the key and tries again when it is deleted: when the
leader resigns (revoking its lease deletes the key at once) or dies (its lease expires after
``ttl`` seconds). So a standby takes over within about ``ttl`` seconds of the leader's death.

The leader stays leader while its lease lives; ``lost`` is set when keep-alive fails to renew
it. Writes that must only come from the leader compare the election key's ``mod_revision``
(``fence``) in their transaction, so a leader that lost its lease without noticing yet cannot
overwrite its successor's work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from shoal.records import ELECTION
from shoal.state import Compare, Lease, Put, StateError, StateStore

log = logging.getLogger(__name__)


class NotLeader(Exception):
    """A fenced write failed: another instance leads now."""


class LeaderElection:
    """One candidate. ``campaign()`` returns once this instance leads; ``resign()`` steps down."""

    def __init__(
        self,
        store: StateStore,
        instance_id: str,
        ttl: int = 3,
        key: str = ELECTION,
        retry_s: float = 0.5,
    ) -> None:
        self._store = store
        self.instance_id = instance_id
        self.ttl = ttl
        self.key = key
        self._retry_s = retry_s
        self._lease: Lease | None = None
        self.fence: Compare | None = None  # set while leading

    @property
    def leading(self) -> bool:
        return self.fence is not None and self._lease is not None and not self._lease.lost.is_set()

    async def campaign(self) -> None:
        """Block until this instance holds the election key. etcd outages are retried."""
        while True:
            try:
                if await self._try_acquire():
                    log.info("%s became leader", self.instance_id)
                    return
                await self._wait_vacant()
            except StateError as exc:  # unreachable etcd, a broken or compacted watch
                log.warning("election: %s; retrying", exc)
                await asyncio.sleep(self._retry_s)

    async def _try_acquire(self) -> bool:
        if self._lease is None or self._lease.lost.is_set():
            self._lease = await self._store.grant_lease(self.ttl)
        value = self.instance_id.encode()
        res = await self._store.txn(
            [Compare(self.key, 0)], [Put(self.key, value, lease=self._lease.id)]
        )
        if res.succeeded:
            self.fence = Compare(self.key, res.revision)
            return True
        kv = await self._store.get(self.key)
        if kv is not None and kv.lease == self._lease.id:
            # Our own key from an earlier term on this lease (e.g. a retried txn): keep it.
            self.fence = Compare(self.key, kv.mod_revision)
            return True
        return False

    async def _wait_vacant(self) -> None:
        """Return once the election key is (or was just) deleted."""
        kv = await self._store.get(self.key)
        if kv is None:
            return
        watch = await self._store.watch(self.key, kv.mod_revision + 1)
        try:
            async for ev in watch:
                if ev.kind == "delete" and ev.key == self.key:
                    return
        except StateError as exc:
            log.debug("election watch broke (%s); re-reading", exc)
        finally:
            await watch.cancel()

    async def wait_lost(self) -> None:
        """Return when this instance's lease is lost (it is then no longer the leader)."""
        if self._lease is None:
            return
        await self._lease.lost.wait()

    async def resign(self) -> None:
        """Step down: revoke the lease so the key disappears and a standby takes over now."""
        self.fence = None
        lease, self._lease = self._lease, None
        if lease is not None:
            with contextlib.suppress(StateError):
                await lease.revoke()

    async def leader(self) -> str | None:
        """The current leader's instance id, if any."""
        kv = await self._store.get(self.key)
        return kv.value.decode() if kv is not None else None


async def lead_forever(
    election: LeaderElection,
    lead: Callable[[], Awaitable[None]],
    on_change: Callable[[bool], None] = lambda leading: None,
    pause_s: float = 0.5,
) -> None:
    """Campaign, run ``lead`` while leading, step down when it returns or fails, and campaign
    again, until cancelled. Whatever ``lead`` raises ends only that term: a leader whose loops
    died while its lease lived on would hold the key forever and no instance would lead."""
    while True:
        try:
            await election.campaign()
        except Exception:  # campaign retries etcd's errors itself: this is a bug, logged
            log.exception("%s: campaign failed; campaigning again", election.instance_id)
            await asyncio.sleep(pause_s)
            continue
        on_change(True)
        try:
            await lead()
        except Exception as exc:  # NotLeader, etcd errors, and any bug in a leader's loop
            log.warning(
                "%s: leader loop ended (%s: %s); stepping down",
                election.instance_id,
                type(exc).__name__,
                exc,
                exc_info=not isinstance(exc, (StateError, NotLeader)),
            )
        finally:
            on_change(False)
        log.warning("%s lost leadership; campaigning again", election.instance_id)
        await election.resign()
        await asyncio.sleep(pause_s)  # a loop that fails at once must not spin
