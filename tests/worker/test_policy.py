"""The memory tiers' cache policies on their own (pure logic): W-TinyLFU keeps the models
asked for often through a scan of models asked for once, where LRU loses them; both stay
within budget and never displace a pinned model (the accounting invariants of every policy
are also fuzzed in test_worker_units.py)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.cache import Tier, TieredCache
from worker.policy import POLICIES, FrequencySketch, TinyLfu, make_policy


def _replay(policy: str, requests: list[int], budget: int, size: int = 10) -> tuple[int, int]:
    """Demand-cache replay (a miss loads and admits): (hits, misses) of ``requests``."""
    c: TieredCache[int, str] = TieredCache({Tier.HOST: budget}, policy=policy)
    hits = misses = 0
    for key in requests:
        if c.get(key) is not None:
            hits += 1
        else:
            misses += 1
            c.admit(key, "m", size, Tier.HOST)
        assert c.used(Tier.HOST) <= budget
    return hits, misses


def _zipf_with_scans(seed: int, n: int = 20_000, every: int = 1000) -> tuple[list[int], list[bool]]:
    """Zipf-like traffic over 500 models, and every 1,000 requests a batch job touching 300
    models never seen before, once each. Returns the requests and which are the scan's."""
    rng = random.Random(seed)
    weights = [1.0 / (i + 1) ** 1.1 for i in range(500)]
    out: list[int] = []
    scan: list[bool] = []
    fresh = 10_000
    for i in range(n):
        if i % every == every - 1:
            for _ in range(300):
                out.append(fresh)
                scan.append(True)
                fresh += 1
        out.append(rng.choices(range(500), weights)[0])
        scan.append(False)
    return out, scan


def _steady_hit_rate(policy: str, requests: list[int], scan: list[bool]) -> float:
    """Hit rate of the non-scan requests (the tenants' own traffic)."""
    c: TieredCache[int, str] = TieredCache({Tier.HOST: 1000}, policy=policy)
    hits = total = 0
    for key, is_scan in zip(requests, scan, strict=True):
        hit = c.get(key) is not None
        if not hit:
            c.admit(key, "m", 10, Tier.HOST)
        if not is_scan:
            total += 1
            hits += hit
    return hits / total


def test_tinylfu_keeps_the_hot_set_through_scans_that_flush_lru() -> None:
    requests, scan = _zipf_with_scans(seed=1, every=200)
    steady = [k for k, s in zip(requests, scan, strict=True) if not s]
    quiet = [False] * len(steady)
    lru_scan = _steady_hit_rate("lru", requests, scan)
    lru_quiet = _steady_hit_rate("lru", steady, quiet)
    tiny_scan = _steady_hit_rate("tinylfu", requests, scan)
    loss = lru_quiet - lru_scan
    assert loss >= 0.10, (lru_quiet, lru_scan)  # scans heavy enough to hurt LRU
    recovered = (tiny_scan - lru_scan) / loss
    assert recovered >= 0.75, (tiny_scan, lru_scan, lru_quiet)


def test_on_pure_zipf_tinylfu_is_no_worse_than_lru() -> None:
    rng = random.Random(2)
    weights = [1.0 / (i + 1) ** 0.9 for i in range(2000)]
    requests = rng.choices(range(2000), weights, k=30_000)
    lru, _ = _replay("lru", requests, 1000)
    tiny, _ = _replay("tinylfu", requests, 1000)
    assert tiny >= lru, (tiny, lru)


def test_a_pinned_model_survives_any_pressure() -> None:
    for policy in POLICIES:
        c: TieredCache[int, str] = TieredCache({Tier.HOST: 50}, policy=policy)
        c.admit(0, "m", 10, Tier.HOST)
        pinned = c.acquire(0)
        assert pinned is not None
        for key in range(1, 200):
            c.admit(key, "m", 10, Tier.HOST)
            assert c.peek(0) is pinned
        c.release(pinned)
        assert c.used(Tier.HOST) <= 50


def test_the_window_admits_by_frequency() -> None:
    p = TinyLfu(budget=100, window=0.1)
    sketch = p.sketch
    for _ in range(5):
        sketch.add("hot")
    assert sketch.estimate("hot") == 5 and sketch.estimate("cold") == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 40), max_size=300), st.integers(1, 9), st.integers(20, 200))
def test_tinylfu_never_exceeds_its_budget(keys: list[int], size: int, budget: int) -> None:
    _replay("tinylfu", keys, budget, size)


def test_the_sketch_forgets_old_popularity() -> None:
    s = FrequencySketch(width=64, sample=100)
    for _ in range(15):
        s.add("old")
    assert s.estimate("old") == 15
    for i in range(200):
        s.add(("other", i))
    assert s.estimate("old") < 8  # halved at least once


def test_unknown_policies_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="unknown cache policy 'mru'"):
        make_policy("mru", 10)


def test_a_seeded_model_is_admitted_over_a_rarely_asked_one() -> None:
    """A warm hand-off credits a preloaded model with its old worker's count: when it leaves
    the window and competes with main's victim (models asked for twice), the seeded one stays
    and the unseeded one (asked for once, here) is the one dropped."""
    for seeded in (True, False):
        c: TieredCache[str, str] = TieredCache({Tier.HOST: 1000}, policy="tinylfu")
        for i in range(100):  # a full tier of models asked for twice
            c.admit(f"m{i}", "v", 10, Tier.HOST)
            c.get(f"m{i}")
        c.admit("preloaded", "v", 20, Tier.HOST)
        if seeded:
            c.policy(Tier.HOST).seed("preloaded", 12)
        assert c.policy(Tier.HOST).score("preloaded") == (12 if seeded else 1)
        for i in range(5):  # newcomers push "preloaded" out of the window: it competes
            c.admit(f"new{i}", "v", 10, Tier.HOST)
        assert ("preloaded" in c) is seeded


def test_hottest_ranks_by_score_then_recency() -> None:
    for policy in POLICIES:
        c: TieredCache[str, str] = TieredCache({Tier.HOST: 10_000}, policy=policy)
        for k in ("a", "b", "c", "d"):
            c.admit(k, "v", 10, Tier.HOST)
        for _ in range(5):
            c.get("b")
        c.get("c")
        ranked = [e.key for e, _score in c.hottest(3)]
        if policy == "tinylfu":
            assert ranked == ["b", "c", "d"]  # b asked 6 times, c twice; d newer than a
        else:
            assert ranked == ["c", "b", "d"]  # recency only
        assert [s for _e, s in c.hottest(10)] == sorted(
            (s for _e, s in c.hottest(10)), reverse=True
        )
