"""Per-tenant quotas: a token bucket and an in-flight cap, each hitting only its tenant."""

from __future__ import annotations

import pytest

from router.quota import QuotaExceeded, Quotas


def test_rate_limit_refills_with_time_and_isolates_tenants() -> None:
    clock = [0.0]
    q = Quotas(lambda: clock[0], default_rate=10.0)
    for _ in range(10):  # a burst of one second's worth
        q.acquire("flood")
        q.release("flood")
    with pytest.raises(QuotaExceeded, match="rate limit"):
        q.acquire("flood")
    q.acquire("steady")  # another tenant is untouched
    q.release("steady")
    clock[0] = 0.5  # half a second refills five
    for _ in range(5):
        q.acquire("flood")
        q.release("flood")
    with pytest.raises(QuotaExceeded):
        q.acquire("flood")


def test_in_flight_cap_and_override() -> None:
    q = Quotas(lambda: 0.0, default_in_flight=2)
    q.acquire("t")
    q.acquire("t")
    with pytest.raises(QuotaExceeded, match="in flight"):
        q.acquire("t")
    q.release("t")
    q.acquire("t")
    q.acquire("vip", max_in_flight=5)
    q.acquire("vip", max_in_flight=5)
    q.acquire("vip", max_in_flight=5)  # its override is above the default
