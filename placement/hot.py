"""Hot tenants: grow the shard of a tenant whose request rate is above a threshold.

Reporters publish per-tenant rates (``shoal.records.LoadReport``); the leader sums them per
tenant every ``interval_s`` and feeds the totals to ``HotTenantController.step``, which says
which ``TenantConfig`` records to write. Per tenant:

* **grow** when the rate exceeds ``threshold``: ``shard_size = clamp(ceil(base * rate /
  threshold), base + 1, max_shard)``, only ever upwards while hot. The shard function makes
  a larger shard a superset of the smaller one (nested), so the old members keep their warm
  caches and only the new ones start cold;
* **cool down**: once the rate has stayed at or below the threshold for ``cooldown_s``, the
  shrink is *announced* by setting ``hot_until`` to now + ``drain_s``: routers may stop
  sending new work to the members that will leave while requests in flight finish;
* **shrink** at ``hot_until``: ``shard_size`` back to 0 (the pool default). A tenant that gets
  hot again before then keeps its grown shard (the announcement is withdrawn).

``hot_until`` is the earliest time a grown shard may shrink back (0: not managed): while the
tenant is hot it stays at least ``drain_s`` + ``cooldown_s``/2 ahead of now.

``hot_until > 0`` marks a shard the controller manages, so a new leader recognises them
(``adopt``) and restarts their cool-down, the conservative choice. Tenants with an explicit
member list, or a shard size an operator set (``shard_size > 0`` and ``hot_until == 0``), are
left alone. The clock is injected; ``step`` is pure apart from the controller's own memory.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace

from placement.election import NotLeader
from shoal.records import LOAD, TENANTS, LoadReport, TenantConfig, tenant_key
from shoal.state import KV, Compare, Put, StateError, StateStore, iter_prefix

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class HotPolicy:
    threshold: float  # requests/s; <= 0 disables the controller
    base_shard: int  # the pool default k
    max_shard: int
    cooldown_s: float
    drain_s: float

    def grown_size(self, rate: float) -> int:
        want = math.ceil(self.base_shard * rate / self.threshold)
        return max(self.base_shard + 1, min(self.max_shard, want))


@dataclass(slots=True)
class _Managed:
    last_hot: float
    announced: bool = False


class HotTenantController:
    """Decides shard sizes of hot tenants (see module docstring)."""

    def __init__(self, policy: HotPolicy, now: Callable[[], float]) -> None:
        self.policy = policy
        self._now = now
        self._managed: dict[str, _Managed] = {}

    @property
    def managed(self) -> set[str]:
        return set(self._managed)

    def adopt(self, configs: Iterable[TenantConfig]) -> None:
        """Take over shards a previous leader grew: their cool-down starts again now."""
        now = self._now()
        for cfg in configs:
            if cfg.hot_until > 0 and not cfg.members:
                self._managed.setdefault(cfg.tenant, _Managed(now))

    def candidates(self, rates: Mapping[str, float]) -> set[str]:
        """Tenants whose config ``step`` needs: the hot ones and the ones it manages."""
        if self.policy.threshold <= 0:
            return set()
        return {t for t, r in rates.items() if r > self.policy.threshold} | self.managed

    def step(
        self, rates: Mapping[str, float], configs: Mapping[str, TenantConfig | None]
    ) -> list[TenantConfig]:
        """Records to write now, given summed ``rates`` and the current configs of
        ``candidates(rates)`` (None: no record yet)."""
        if self.policy.threshold <= 0:
            return []
        now = self._now()
        out: list[TenantConfig] = []
        for tenant in sorted(self.candidates(rates)):
            cfg = configs.get(tenant)
            rate = rates.get(tenant, 0.0)
            new = self._decide(tenant, cfg, rate, now)
            if new is not None:
                out.append(new)
        return out

    def _decide(
        self, tenant: str, cfg: TenantConfig | None, rate: float, now: float
    ) -> TenantConfig | None:
        p = self.policy
        state = self._managed.get(tenant)
        if cfg is not None and (cfg.members or (cfg.shard_size > 0 and cfg.hot_until <= 0)):
            self._managed.pop(tenant, None)  # an operator's override wins
            return None
        if state is not None and (cfg is None or cfg.hot_until <= 0):
            state = None  # someone reset the record: start over
            self._managed.pop(tenant, None)
        hot = rate > p.threshold
        if hot:
            size = p.grown_size(rate)
            current = cfg.shard_size if cfg is not None and state is not None else 0
            if state is None:
                state = self._managed[tenant] = _Managed(now)
            state.last_hot = now
            # Rewrite when growing, withdrawing an announced shrink, or when the stored
            # earliest-shrink time gets close (so readers of hot_until never see it pass
            # while the tenant is still hot): at most one write per cooldown/2 per tenant.
            stale = cfg is None or cfg.hot_until < now + p.drain_s + p.cooldown_s / 2
            if size > current or state.announced or stale:
                state.announced = False
                base = cfg or TenantConfig(tenant)
                hold = now + p.cooldown_s + p.drain_s
                return replace(base, shard_size=max(size, current), hot_until=hold)
            return None
        if state is None or cfg is None:
            return None
        if not state.announced:
            if now - state.last_hot < p.cooldown_s:
                return None
            state.announced = True
            return replace(cfg, hot_until=now + p.drain_s)
        if now < cfg.hot_until:
            return None
        del self._managed[tenant]
        return replace(cfg, shard_size=0, hot_until=0.0)


def sum_rates(reports: Iterable[LoadReport]) -> dict[str, float]:
    """Total rate per tenant across reporters (negative or non-finite rates ignored)."""
    totals: dict[str, float] = {}
    for report in reports:
        for tenant, rate in report.rates.items():
            if math.isfinite(rate) and rate > 0:
                totals[tenant] = totals.get(tenant, 0.0) + rate
    return totals


class HotTenantLoop:
    """The leader's driver: every ``interval_s`` read load reports, step, write (fenced CAS).

    A write that loses its compare-and-swap is dropped and recomputed on the next tick; a
    fenced write that fails because leadership moved ends the loop with ``NotLeader``.
    """

    def __init__(
        self,
        store: StateStore,
        controller: HotTenantController,
        fence: Compare,
        interval_s: float,
        on_change: Callable[[TenantConfig], None] | None = None,
    ) -> None:
        self._store = store
        self.controller = controller
        self._fence = fence
        self._interval_s = interval_s
        self._on_change = on_change

    async def run(self) -> None:
        adopted = False
        while True:
            try:
                if not adopted:  # etcd may be out as a term begins: adopt when it answers
                    await self._adopt()
                    adopted = True
                await self.tick()
            except NotLeader:
                raise
            except StateError as exc:
                log.warning("hot-tenant controller: %s", exc)
            await asyncio.sleep(self._interval_s)

    async def _adopt(self) -> None:
        configs = []
        async for kv, _ in iter_prefix(self._store, TENANTS):
            cfg = _decode_config(kv)
            if cfg is not None:
                configs.append(cfg)
        self.controller.adopt(configs)

    async def tick(self) -> list[TenantConfig]:
        """One round: returns the records written."""
        reports = []
        async for kv, _ in iter_prefix(self._store, LOAD):
            try:
                reports.append(LoadReport.decode(kv.key[len(LOAD) :], kv.value))
            except (ValueError, TypeError):
                log.debug("ignoring malformed load report %s", kv.key)
        rates = sum_rates(reports)
        wanted = self.controller.candidates(rates)
        current: dict[str, KV | None] = {t: await self._store.get(tenant_key(t)) for t in wanted}
        configs = {t: _decode_config(kv) if kv else None for t, kv in current.items()}
        written = []
        for cfg in self.controller.step(rates, configs):
            key = tenant_key(cfg.tenant)
            old = current.get(cfg.tenant)
            guard = Compare(key, old.mod_revision if old is not None else 0)
            res = await self._store.txn([self._fence, guard], [Put(key, cfg.encode())])
            if res.succeeded:
                written.append(cfg)
                log.info(
                    "tenant %s: shard size %s (hot_until %.0f)",
                    cfg.tenant,
                    cfg.shard_size or "default",
                    cfg.hot_until,
                )
                if self._on_change is not None:
                    self._on_change(cfg)
                continue
            leader = await self._store.get(self._fence.key)
            if leader is None or leader.mod_revision != self._fence.mod_revision:
                raise NotLeader("the election key changed: another instance leads")
        return written


def _decode_config(kv: KV) -> TenantConfig | None:
    try:
        return TenantConfig.decode(kv.value)
    except (ValueError, TypeError, KeyError):
        log.debug("ignoring malformed tenant config %s", kv.key)
        return None
