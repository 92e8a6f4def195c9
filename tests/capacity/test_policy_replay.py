"""The simulator's native W-TinyLFU replay is the worker's policy, exactly: the same request
sequences through ``worker.cache.TieredCache(policy="tinylfu")`` and through
``shoal._native.tinylfu_replay`` hit on the same requests (random sequences with sizes and
several streams, and a Zipf load with scans)."""

from __future__ import annotations

import random

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal._native import tinylfu_replay
from worker.cache import Tier, TieredCache


def _python_hits(items: list[int], sizes: dict[int, int], budget: int) -> list[bool]:
    c: TieredCache[int, str] = TieredCache({Tier.HOST: budget}, policy="tinylfu")
    out = []
    for key in items:
        hit = c.get(key) is not None
        if not hit:
            c.admit(key, "m", sizes[key], Tier.HOST)
        out.append(hit)
    return out


def _native_hits(streams: list[list[int]], sizes: dict[int, int], budget: int) -> list[bool]:
    flat = [k for s in streams for k in s]
    bounds = np.cumsum([0, *(len(s) for s in streams)]).astype(np.int64)
    hits = tinylfu_replay(
        np.asarray(flat, np.uint64),
        np.asarray([sizes[k] for k in flat], np.uint64),
        bounds,
        budget,
    )
    return [bool(h) for h in hits]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.lists(st.integers(0, 60), max_size=400), min_size=1, max_size=4),
    st.dictionaries(st.integers(0, 60), st.integers(1, 30)),
    st.integers(1, 400),
)
def test_native_replay_equals_the_worker_policy(
    streams: list[list[int]], size_of: dict[int, int], budget: int
) -> None:
    sizes = {k: size_of.get(k, 7) for k in range(61)}
    want = [h for s in streams for h in _python_hits(s, sizes, budget)]
    assert _native_hits(streams, sizes, budget) == want


def test_native_replay_equals_the_worker_policy_under_zipf_and_scans() -> None:
    rng = random.Random(5)
    weights = [1.0 / (i + 1) for i in range(3000)]
    items: list[int] = []
    fresh = 100_000
    for i in range(60_000):  # enough events to halve the sketch several times
        if i % 500 == 499:
            items.extend(range(fresh, fresh + 200))
            fresh += 200
        items.append(rng.choices(range(3000), weights)[0])
    sizes = {k: 5 + k % 17 for k in set(items)}
    assert _native_hits([items], sizes, 4000) == _python_hits(items, sizes, 4000)
