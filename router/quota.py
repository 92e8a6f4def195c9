"""Per-tenant quotas at the router: a request-rate limit and an in-flight cap.

Rate: a token bucket per tenant (``rate`` tokens/s, burst ``max(rate, 1)`` by default),
refilled lazily from an injected clock, so an idle tenant costs nothing. In flight: a counter
per tenant, released when the request ends. Either limit answers RESOURCE_EXHAUSTED for the
tenant over it and nobody else. A limit of 0 means unlimited. Tenant overrides
(``TenantConfig.rate_limit`` / ``max_in_flight``) take precedence over the defaults.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


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
    ) -> None:
        self._now = now
        self.default_rate = default_rate
        self.default_in_flight = default_in_flight
        self.burst_s = burst_s
        self._buckets: dict[str, _Bucket] = {}
        self._in_flight: dict[str, int] = {}

    def acquire(self, tenant: str, rate: float = 0.0, max_in_flight: int = 0) -> None:
        """Admit one request of ``tenant`` or raise ``QuotaExceeded``; pair with ``release``."""
        rate = rate or self.default_rate
        cap = max_in_flight or self.default_in_flight
        if cap and self._in_flight.get(tenant, 0) >= cap:
            raise QuotaExceeded(f"tenant {tenant} has {cap} requests in flight (its limit)")
        if rate:
            burst = max(rate * self.burst_s, 1.0)
            now = self._now()
            b = self._buckets.get(tenant)
            if b is None:
                b = self._buckets[tenant] = _Bucket(burst, now)
            b.tokens = min(burst, b.tokens + (now - b.updated) * rate)
            b.updated = now
            if b.tokens < 1.0:
                raise QuotaExceeded(
                    f"tenant {tenant} is over its rate limit of {rate:g} requests/s"
                )
            b.tokens -= 1.0
        self._in_flight[tenant] = self._in_flight.get(tenant, 0) + 1

    def release(self, tenant: str) -> None:
        n = self._in_flight.get(tenant, 0) - 1
        if n > 0:
            self._in_flight[tenant] = n
        else:
            self._in_flight.pop(tenant, None)
