"""Per-tenant request rates the router publishes for the hot-tenant controller.

The gateway counts requests per tenant (natively, per request); every ``interval`` seconds the
reporter takes those counts and writes the window's rates to ``/shoal/load/<router_id>`` (a
``LoadReport``) under this router's lease, so a router that dies takes its report with it.
Routers report, workers do not: each request is counted once (see ``LoadReport``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping

from shoal.records import LoadReport, load_key
from shoal.state import Lease, StateError, StateStore
from shoal.tasks import cancel_and_wait

log = logging.getLogger(__name__)


class LoadReporter:
    def __init__(
        self,
        store: StateStore,
        reporter_id: str,
        counts: Callable[[], Mapping[str, int]],
        interval: float = 2.0,
        lease_ttl: int = 10,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.reporter_id = reporter_id
        self.interval = interval
        self.lease_ttl = lease_ttl
        self._now = now
        self._counts = counts
        self._since = now()
        self._lease: Lease | None = None
        self._task: asyncio.Task[None] | None = None

    def take(self) -> LoadReport:
        """The rates since the last call, and a fresh window."""
        now = self._now()
        span = max(now - self._since, 1e-6)
        rates = {t: n / span for t, n in self._counts().items()}
        self._since = now
        return LoadReport(self.reporter_id, rates)

    async def publish(self) -> None:
        report = self.take()
        if self._lease is None or self._lease.lost.is_set():
            self._lease = await self.store.grant_lease(self.lease_ttl)
        await self.store.put(load_key(self.reporter_id), report.encode(), lease=self._lease.id)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.publish()
            except StateError as exc:  # etcd away: the next window reports again
                log.debug("load report not published: %s", exc)
                self._lease = None
            except Exception:  # a bug must not end the reports
                log.exception("load report not published")
                self._lease = None

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        if self._lease is not None:
            with contextlib.suppress(StateError):
                await self._lease.revoke()
