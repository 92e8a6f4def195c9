"""Per-tenant quotas at the router: a request-rate limit and an in-flight cap, with a short,
bounded admission queue.

Rate: a token bucket per tenant (``rate`` tokens/s, burst ``max(rate * burst_s, 1)``),
refilled lazily from an injected clock, so an idle tenant costs nothing. A request that finds
the bucket empty *reserves* the next token (the bucket goes negative) and waits until that
token is due, provided it is due within ``queue_s`` and before the request's own deadline;
otherwise it is refused without reserving anything. The reservation queue is therefore at
most ``rate * queue_s`` requests deep.

In flight: a FIFO ``Slots`` per tenant (``shoal.slots``); a request over the cap waits in line
(at most ``max_queued`` of them) for what is left of its ``queue_s`` and its deadline.

Why queue instead of refusing at once: a client that resends as soon as it is refused (any
closed-loop flood) turns instant refusals into a spin that burns the router's CPU, which every
other tenant shares; a bounded wait paces such a client at its quota, and a burst slightly
over quota is smoothed instead of failed. For the same reason a request that cannot be
admitted in time is refused only when its queue time has run out (as if it had queued),
with at most ``max_queued`` such answers held per tenant; a request whose deadline is shorter
than ``queue_s`` is refused at once, so a caller in a hurry learns it without waiting.
``queue_s = 0`` restores immediate refusal.
Either limit answers RESOURCE_EXHAUSTED for the tenant over it and nobody else. A limit of 0
means unlimited; tenant overrides (``TenantConfig.rate_limit`` / ``max_in_flight``) take
precedence over the defaults.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

from shoal.slots import Admission, Slots


class QuotaExceeded(Exception):
    pass


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class Quotas:
    def __init__(
        self,
        now: Callable[[], float],
        default_rate: float = 0.0,
        default_in_flight: int = 0,
        burst_s: float = 1.0,
        queue_s: float = 0.0,
        max_queued: int = 256,
        on_queued: Callable[[], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._now = now
        self.default_rate = default_rate
        self.default_in_flight = default_in_flight
        self.burst_s = burst_s
        self.queue_s = max(0.0, queue_s)
        self.max_queued = max(0, max_queued)
        self._buckets: dict[str, _Bucket] = {}
        self._slots: dict[str, Slots] = {}
        self._holding: dict[str, int] = {}  # refusals being held, per tenant
        self._rng = rng or random.Random()
        #: called for each request admitted after waiting in the queue (metrics)
        self._on_queued = on_queued

    async def admit(
        self,
        tenant: str,
        rate: float = 0.0,
        max_in_flight: int = 0,
        timeout: float | None = None,
    ) -> bool:
        """Admit one request of ``tenant`` (waiting at most ``queue_s`` and never past
        ``timeout`` seconds) or raise ``QuotaExceeded``. True when the request holds an
        in-flight slot, to be given back with ``release`` when it ends."""
        rate = rate or self.default_rate
        cap = max_in_flight or self.default_in_flight
        budget = self.queue_s if timeout is None else min(self.queue_s, max(0.0, timeout))
        patient = budget >= self.queue_s > 0  # its deadline allows the whole queue time
        slots: Slots | None = None
        if cap:
            slots = self._slots.get(tenant)
            if slots is None:
                slots = self._slots[tenant] = Slots(cap, self.max_queued)
            slots.limit = cap
            if budget <= 0 and slots.held >= cap:  # nothing to wait with: refuse, keep tokens
                raise QuotaExceeded(_in_flight_message(tenant, cap, None))
        waited = 0.0
        queued = False
        if rate:
            try:
                waited = self._take_token(tenant, rate, budget)
            except QuotaExceeded as exc:
                if slots is not None and slots.idle:
                    self._slots.pop(tenant, None)
                await self._refuse(tenant, str(exc), budget if patient else 0.0)
            if waited > 0:
                try:
                    await asyncio.sleep(waited)
                except asyncio.CancelledError:
                    self._refund(tenant)
                    raise
                queued = True
        if slots is not None and not slots.try_acquire():
            left = budget - waited
            outcome = await slots.acquire(left) if left > 0 else Admission.TIMEOUT
            if outcome is not Admission.GRANTED:
                if slots.idle:
                    self._slots.pop(tenant, None)
                hold = left if patient and outcome is Admission.FULL else 0.0
                await self._refuse(tenant, _in_flight_message(tenant, cap, outcome), hold)
            queued = True
        if queued and self._on_queued is not None:
            self._on_queued()
        return slots is not None

    async def _refuse(self, tenant: str, message: str, hold: float) -> NoReturn:
        """Raise ``QuotaExceeded``; first hold the answer up to ``hold`` seconds, unless the
        tenant already has ``max_queued`` answers held (then at once).

        The hold is jittered (between half and all of ``hold``). Why hold a refusal that is
        certain: a caller that resends as soon as it is answered would otherwise spin, and
        each of its requests costs the router the same gRPC work whether admitted or not.
        Held, such a caller sends at most one request per queue time, and the refusal reads
        exactly like a request that queued and timed out.
        """
        held = self._holding.get(tenant, 0)
        if hold > 0 and held < self.max_queued:
            # Spread over [hold/2, hold]: refusals released together would come back together
            # and hit the router as one burst, every round, delaying everybody in it.
            hold *= 0.5 + 0.5 * self._rng.random()
            self._holding[tenant] = held + 1
            try:
                await asyncio.sleep(hold)
            finally:
                n = self._holding[tenant] - 1
                if n:
                    self._holding[tenant] = n
                else:
                    del self._holding[tenant]
            message += f"; refused after waiting {hold * 1000:.0f} ms"
        raise QuotaExceeded(message)

    def _take_token(self, tenant: str, rate: float, budget: float) -> float:
        """Take (or reserve) one token: the seconds until it is due, or ``QuotaExceeded``."""
        burst = max(rate * self.burst_s, 1.0)
        now = self._now()
        b = self._buckets.get(tenant)
        if b is None:
            b = self._buckets[tenant] = _Bucket(burst, now)
        b.tokens = min(burst, b.tokens + (now - b.updated) * rate)
        b.updated = now
        if b.tokens >= 1.0:
            b.tokens -= 1.0
            return 0.0
        wait = (1.0 - b.tokens) / rate
        if wait > budget:
            raise QuotaExceeded(
                f"tenant {tenant} is over its rate limit of {rate:g} requests/s "
                f"(the next slot is {wait * 1000:.0f} ms away, beyond the "
                f"{budget * 1000:.0f} ms this request may wait)"
            )
        b.tokens -= 1.0
        return wait

    def _refund(self, tenant: str) -> None:
        b = self._buckets.get(tenant)
        if b is not None:
            b.tokens += 1.0

    def release(self, tenant: str) -> None:
        """Give back the in-flight slot an ``admit`` returned True for."""
        slots = self._slots.get(tenant)
        if slots is None:
            return
        slots.release()
        if slots.idle:
            del self._slots[tenant]


def _in_flight_message(tenant: str, cap: int, outcome: Admission | None) -> str:
    why = {
        None: "",
        Admission.FULL: "; its admission queue is full",
        Admission.TIMEOUT: "; none finished within the time this request may wait",
    }.get(outcome, "")
    return f"tenant {tenant} has {cap} requests in flight (its limit){why}"
