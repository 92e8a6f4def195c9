"""The worker's key in etcd: ``WorkerInfo`` under a lease, re-registered after losing it.

``start()`` grants a lease and writes the record, retrying with backoff (0.2 s doubling to 5 s)
until etcd answers. A background task then waits for the lease to be lost (etcd unreachable for
longer than the TTL, so the key is gone) and registers again — under a new lease — as soon as
etcd is back. ``publish()`` rewrites the record (e.g. ``draining``) under the current lease;
``stop()`` revokes the lease so the key disappears at once rather than after the TTL. After a
SIGKILL nobody renews the lease and etcd deletes the key within the TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from shoal.records import WorkerInfo
from shoal.state import Lease, StateError, StateStore
from shoal.tasks import cancel_and_wait

log = logging.getLogger(__name__)


class Registration:
    def __init__(
        self,
        store: StateStore,
        key: str,
        info: Callable[[], WorkerInfo],
        ttl: int,
        revoke_timeout: float = 3.0,
    ) -> None:
        self._store = store
        self.key = key
        self._info = info
        self._ttl = ttl
        self._revoke_timeout = revoke_timeout
        self._lease: Lease | None = None
        self._task: asyncio.Task[None] | None = None
        self.registrations = 0

    @property
    def lease_id(self) -> int:
        return self._lease.id if self._lease is not None else 0

    async def start(self) -> None:
        await self._register_until_done()
        self._task = asyncio.get_running_loop().create_task(self._keep())

    async def _register_once(self) -> None:
        lease = await self._store.grant_lease(self._ttl)
        try:
            await self._store.put(self.key, self._info().encode(), lease=lease.id)
        except BaseException:
            with contextlib.suppress(StateError):
                await lease.revoke()
            raise
        self._lease = lease
        self.registrations += 1

    async def _register_until_done(self) -> None:
        delay = 0.2
        while True:
            try:
                await self._register_once()
                return
            except StateError as exc:
                log.warning(
                    "cannot register %s in etcd (%s); retrying in %.1fs", self.key, exc, delay
                )
            except Exception:  # a bug must not leave the worker unregistered for good
                log.exception("cannot register %s in etcd; retrying in %.1fs", self.key, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _keep(self) -> None:
        while True:
            lease = self._lease
            assert lease is not None
            await lease.lost.wait()
            log.warning("etcd lease of %s lost; registering again", self.key)
            await self._register_until_done()

    async def publish(self) -> None:
        """Rewrite the record under the current lease (best effort: etcd may be down)."""
        if self._lease is None:
            return
        try:
            await self._store.put(self.key, self._info().encode(), lease=self._lease.id)
        except StateError as exc:
            log.warning("cannot update %s in etcd: %s", self.key, exc)

    async def stop(self) -> None:
        """Stop re-registering and revoke the lease: the key disappears now."""
        await cancel_and_wait(self._task)
        self._task = None
        lease, self._lease = self._lease, None
        if lease is not None:
            try:
                await asyncio.wait_for(lease.revoke(), self._revoke_timeout)
            except (StateError, TimeoutError) as exc:
                log.warning(
                    "cannot revoke the lease of %s (%s); it expires in %ss",
                    self.key,
                    exc,
                    self._ttl,
                )
