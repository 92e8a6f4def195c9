"""Per-tenant quotas: a token bucket and an in-flight cap, each hitting only its tenant, with a
short bounded admission queue in front of both (router/quota.py)."""

from __future__ import annotations

import asyncio

import pytest

from router.quota import QuotaExceeded, Quotas


async def _admit_release(q: Quotas, tenant: str, **kw: float) -> None:
    if await q.admit(tenant, **kw):  # type: ignore[arg-type]
        q.release(tenant)


async def test_rate_limit_refills_with_time_and_isolates_tenants() -> None:
    clock = [0.0]
    q = Quotas(lambda: clock[0], default_rate=10.0)
    for _ in range(10):  # a burst of one second's worth
        await _admit_release(q, "flood")
    with pytest.raises(QuotaExceeded, match="rate limit of 10 requests/s"):
        await q.admit("flood")
    await _admit_release(q, "steady")  # another tenant is untouched
    clock[0] = 0.5  # half a second refills five
    for _ in range(5):
        await _admit_release(q, "flood")
    with pytest.raises(QuotaExceeded):
        await q.admit("flood")


async def test_in_flight_cap_and_override() -> None:
    q = Quotas(lambda: 0.0, default_in_flight=2)
    assert await q.admit("t") and await q.admit("t")
    with pytest.raises(QuotaExceeded, match="2 requests in flight"):
        await q.admit("t")
    q.release("t")
    assert await q.admit("t")
    for _ in range(3):  # its override is above the default
        assert await q.admit("vip", max_in_flight=5)


async def test_over_rate_requests_wait_for_their_turn_within_the_queue_time() -> None:
    """Burst spent: the next requests reserve future tokens (paced at the rate) as long as the
    token is due within queue_s; the first one past it is refused at once, and nothing was
    reserved for it."""
    clock = [0.0]  # frozen: only the reservations move the bucket
    q = Quotas(lambda: clock[0], default_rate=10.0, queue_s=0.5)
    for _ in range(10):
        await _admit_release(q, "t")
    waiters = [asyncio.ensure_future(_admit_release(q, "t")) for _ in range(5)]
    await asyncio.sleep(0)  # each has reserved its token (due in 0.1 .. 0.5 s)
    with pytest.raises(QuotaExceeded, match="600 ms away, beyond the 500 ms"):
        await q.admit("t")
    await asyncio.gather(*waiters)  # every queued request was admitted
    clock[0] = 0.1  # a token's worth of time: one more fits in the (0.5 s deep) queue
    done = asyncio.ensure_future(_admit_release(q, "t"))
    await asyncio.sleep(0)
    assert not done.done()  # the queue is still 0.5 s deep: it waits its turn
    done.cancel()


async def test_a_deadline_shorter_than_the_wait_is_refused_at_once() -> None:
    q = Quotas(lambda: 0.0, default_rate=1.0, queue_s=10.0)
    await _admit_release(q, "t")
    with pytest.raises(QuotaExceeded, match="beyond the 50 ms this request may wait"):
        await q.admit("t", timeout=0.05)
    # Nothing was reserved for the refused request: a later caller waits one token, not two.
    with pytest.raises(QuotaExceeded, match="1000 ms away"):
        await q.admit("t", timeout=0.5)


async def test_a_cancelled_waiter_gives_its_token_back() -> None:
    q = Quotas(lambda: 0.0, default_rate=2.0, queue_s=5.0)
    for _ in range(2):
        await _admit_release(q, "t")
    waiter = asyncio.ensure_future(q.admit("t"))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    with pytest.raises(QuotaExceeded, match="500 ms away"):  # not 1000: the token came back
        await q.admit("t", timeout=0.1)


async def test_in_flight_waiters_get_freed_slots_in_order_and_the_line_is_bounded() -> None:
    q = Quotas(lambda: 0.0, default_in_flight=1, queue_s=5.0, max_queued=2)
    assert await q.admit("t")
    first = asyncio.ensure_future(q.admit("t"))
    second = asyncio.ensure_future(q.admit("t"))
    await asyncio.sleep(0)
    with pytest.raises(QuotaExceeded, match="admission queue is full"):
        await q.admit("t", timeout=1.0)  # a deadline shorter than the queue time: at once
    await _admit_release(q, "other")  # another tenant is not held up by the line
    q.release("t")
    assert await first and not second.done()  # the oldest waiter got the slot
    q.release("t")
    assert await second
    q.release("t")


async def test_certain_refusals_are_held_for_the_queue_time_up_to_max_queued() -> None:
    """A patient request that cannot make it is answered when its queue time runs out (so a
    caller resending on every answer is paced); past ``max_queued`` held answers, at once."""
    q = Quotas(lambda: 0.0, default_rate=10.0, queue_s=0.2, max_queued=1)
    for _ in range(10):
        await _admit_release(q, "t")
    queued = [asyncio.ensure_future(_admit_release(q, "t")) for _ in range(2)]  # 0.1, 0.2 s
    held = asyncio.ensure_future(q.admit("t"))  # due in 0.3 s, beyond 0.2: held, then refused
    await asyncio.sleep(0.05)
    assert not held.done()  # held between 100 and 200 ms (jittered)
    with pytest.raises(QuotaExceeded, match=r"200 ms this request may wait\)$"):
        await q.admit("t")  # one answer is already held for t: this one comes at once
    with pytest.raises(QuotaExceeded, match=r"refused after waiting (1\d\d|200) ms"):
        await held
    await asyncio.gather(*queued)


async def test_in_flight_wait_times_out_and_queue_zero_refuses_without_spending_tokens() -> None:
    q = Quotas(lambda: 0.0, default_in_flight=1, queue_s=0.02)
    assert await q.admit("t")
    with pytest.raises(QuotaExceeded, match="none finished within"):
        await q.admit("t")
    # Two tokens (rate 1, burst 2 s), one slot, no queue.
    immediate = Quotas(lambda: 0.0, default_rate=1.0, default_in_flight=1, burst_s=2.0)
    assert await immediate.admit("t")
    with pytest.raises(QuotaExceeded, match="in flight"):
        await immediate.admit("t")  # refused on the cap: its token is not taken
    immediate.release("t")
    assert await immediate.admit("t")  # so the second token is still there
    immediate.release("t")
    with pytest.raises(QuotaExceeded, match="rate limit"):
        await immediate.admit("t")


async def test_unlimited_tenants_hold_no_slot() -> None:
    q = Quotas(lambda: 0.0)
    assert await q.admit("t") is False
    q.release("t")  # harmless
